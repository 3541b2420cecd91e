//! The error codes a response carries, for `corelog_request_errors_total`: every code in
//! it, NONE included (Kafka's `ErrorsPerSec` counts a response's codes the same way), so a
//! produce to five partitions of which one is refused counts four NONE and one error.

use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::*;

/// A response type, the API it answers and the codes in it.
pub trait ErrorCodes {
    const API: ApiKey;
    fn each_code(&self, f: &mut dyn FnMut(i16));
}

macro_rules! codes {
    ($($ty:ident => $api:ident, |$r:ident, $f:ident| $body:block;)*) => {
        $(impl ErrorCodes for $ty {
            const API: ApiKey = ApiKey::$api;
            fn each_code(&self, $f: &mut dyn FnMut(i16)) {
                let $r = self;
                $body
            }
        })*
    };
}

codes! {
    ProduceResponse => Produce, |r, f| {
        for t in &r.responses { for p in &t.partition_responses { f(p.error_code) } }
    };
    FetchResponse => Fetch, |r, f| {
        if r.error_code != 0 || r.responses.is_empty() { f(r.error_code) }
        for t in &r.responses { for p in &t.partitions { f(p.error_code) } }
    };
    ListOffsetsResponse => ListOffsets, |r, f| {
        for t in &r.topics { for p in &t.partitions { f(p.error_code) } }
    };
    MetadataResponse => Metadata, |r, f| {
        if r.topics.is_empty() { f(0) }
        for t in &r.topics {
            f(t.error_code);
            for p in &t.partitions { if p.error_code != 0 { f(p.error_code) } }
        }
    };
    OffsetCommitResponse => OffsetCommit, |r, f| {
        for t in &r.topics { for p in &t.partitions { f(p.error_code) } }
    };
    OffsetFetchResponse => OffsetFetch, |r, f| {
        f(r.error_code);
        for t in &r.topics { for p in &t.partitions { if p.error_code != 0 { f(p.error_code) } } }
        for g in &r.groups {
            f(g.error_code);
            for t in &g.topics { for p in &t.partitions { if p.error_code != 0 { f(p.error_code) } } }
        }
    };
    FindCoordinatorResponse => FindCoordinator, |r, f| {
        if r.coordinators.is_empty() { f(r.error_code) }
        for c in &r.coordinators { f(c.error_code) }
    };
    JoinGroupResponse => JoinGroup, |r, f| { f(r.error_code) };
    HeartbeatResponse => Heartbeat, |r, f| { f(r.error_code) };
    LeaveGroupResponse => LeaveGroup, |r, f| {
        f(r.error_code);
        for m in &r.members { if m.error_code != 0 { f(m.error_code) } }
    };
    SyncGroupResponse => SyncGroup, |r, f| { f(r.error_code) };
    DescribeGroupsResponse => DescribeGroups, |r, f| { for g in &r.groups { f(g.error_code) } };
    ListGroupsResponse => ListGroups, |r, f| { f(r.error_code) };
    SaslHandshakeResponse => SaslHandshake, |r, f| { f(r.error_code) };
    SaslAuthenticateResponse => SaslAuthenticate, |r, f| { f(r.error_code) };
    ApiVersionsResponse => ApiVersions, |r, f| { f(r.error_code) };
    CreateTopicsResponse => CreateTopics, |r, f| { for t in &r.topics { f(t.error_code) } };
    DeleteTopicsResponse => DeleteTopics, |r, f| { for t in &r.responses { f(t.error_code) } };
    DeleteRecordsResponse => DeleteRecords, |r, f| {
        for t in &r.topics { for p in &t.partitions { f(p.error_code) } }
    };
    InitProducerIdResponse => InitProducerId, |r, f| { f(r.error_code) };
    OffsetForLeaderEpochResponse => OffsetForLeaderEpoch, |r, f| {
        for t in &r.topics { for p in &t.partitions { f(p.error_code) } }
    };
    DescribeAclsResponse => DescribeAcls, |r, f| { f(r.error_code) };
    CreateAclsResponse => CreateAcls, |r, f| { for x in &r.results { f(x.error_code) } };
    DeleteAclsResponse => DeleteAcls, |r, f| { for x in &r.filter_results { f(x.error_code) } };
    DescribeConfigsResponse => DescribeConfigs, |r, f| { for x in &r.results { f(x.error_code) } };
    AlterConfigsResponse => AlterConfigs, |r, f| { for x in &r.responses { f(x.error_code) } };
    IncrementalAlterConfigsResponse => IncrementalAlterConfigs, |r, f| {
        for x in &r.responses { f(x.error_code) }
    };
    DescribeLogDirsResponse => DescribeLogDirs, |r, f| {
        if r.error_code != 0 || r.results.is_empty() { f(r.error_code) }
        for x in &r.results { f(x.error_code) }
    };
    CreatePartitionsResponse => CreatePartitions, |r, f| { for x in &r.results { f(x.error_code) } };
    DeleteGroupsResponse => DeleteGroups, |r, f| { for x in &r.results { f(x.error_code) } };
    OffsetDeleteResponse => OffsetDelete, |r, f| {
        f(r.error_code);
        for t in &r.topics { for p in &t.partitions { if p.error_code != 0 { f(p.error_code) } } }
    };
    DescribeClusterResponse => DescribeCluster, |r, f| { f(r.error_code) };
    DescribeProducersResponse => DescribeProducers, |r, f| {
        for t in &r.topics { for p in &t.partitions { f(p.error_code) } }
    };
    DescribeUserScramCredentialsResponse => DescribeUserScramCredentials, |r, f| {
        f(r.error_code);
        for x in &r.results { if x.error_code != 0 { f(x.error_code) } }
    };
    AlterUserScramCredentialsResponse => AlterUserScramCredentials, |r, f| {
        for x in &r.results { f(x.error_code) }
    };
    DescribeTopicPartitionsResponse => DescribeTopicPartitions, |r, f| {
        for t in &r.topics { f(t.error_code) }
    };
}
