//! The deterministic simulator: madsim nodes pumping the replication core over a faulty
//! network and `SimDisk`. Not built yet: see issue 3. In the plain build it stays a stub.
