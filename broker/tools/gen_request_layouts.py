#!/usr/bin/env python3
"""Writes broker/src/wire/layouts.rs: the wire layout of every Kafka request body the codec
(kafka-protocol) can decode, per API key and version, for the pre-decode guard
(broker/src/wire/guard.rs).

Why generated: the guard must walk exactly what the codec reads, so its layouts are taken
from the codec's own generated `Decodable` impls (the version conditions are evaluated for
every version, nested structs inlined). Re-run after upgrading kafka-protocol:

    python3 broker/tools/gen_request_layouts.py ~/.cargo/registry/src/*/kafka-protocol-0.18.0

The layout language (parsed by guard.rs):
    <n>       n fixed bytes (ints, bools, uuids, floats)
    s / S     string: i16 length / compact (uvarint length + 1); null allowed
    y / Y     bytes:  i32 length / compact
    a( .. )   array of the inner layout, i32 count (-1 = null)
    A( .. )   compact array, uvarint count + 1
    o( .. )   optional struct: i8 marker, the struct follows when it is 1
    t{ k( .. ) .. }  tagged fields: uvarint count, then (tag, size, value); the listed tags
              are decoded in place with their layout, others skipped by size
    t{ k! }   a tag the codec refuses at this version
"""
import re
import sys
from pathlib import Path

FIXED = {"Int8": 1, "Int16": 2, "Int32": 4, "Int64": 8, "UInt16": 2, "UInt32": 4,
         "Float64": 8, "Uuid": 16, "Boolean": 1}
SIMPLE = {"String": "s", "CompactString": "S", "Bytes": "y", "CompactBytes": "Y"}


def parse_structs(src):
    """struct name -> {field -> rust type}"""
    out = {}
    for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", src, re.S):
        fields = {}
        for f in re.finditer(r"pub (\w+): ([^\n]+),\n", m.group(2) + "\n"):
            fields[f.group(1)] = f.group(2)
        out[m.group(1)] = fields
    return out


def elem_type(rust):
    t = rust
    for w in ("Option<", "Vec<", "Option<"):
        if t.startswith(w):
            t = t[len(w):-1]
    return t.split("::")[-1]


def decode_bodies(src):
    out = {}
    for m in re.finditer(r"impl Decodable for (\w+) \{\n    fn decode<B: ByteBuf>\(buf: &mut B, version: i16\) -> Result<Self> \{\n(.*?)\n        Ok\(Self \{", src, re.S):
        out[m.group(1)] = m.group(2)
    return out


def cond(c):
    return c.replace("&&", " and ").replace("||", " or ")


def op_expr(expr, field, structs, name):
    """python expression for one `types::X...` decoder"""
    expr = expr.strip()
    m = re.fullmatch(r"types::(\w+)(?:\((.*)\))?(?: \{ version \})?", expr)
    if not m:
        raise ValueError(f"{name}.{field}: cannot read decoder {expr!r}")
    kind, inner = m.group(1), m.group(2)
    if kind in FIXED:
        return repr(str(FIXED[kind]))
    if kind in SIMPLE:
        return repr(SIMPLE[kind])
    if kind in ("Struct", "OptionStruct"):
        t = elem_type(structs[name][field])
        call = f"S_{t}(version)"
        return f"'o(' + {call} + ')'" if kind == "OptionStruct" else call
    if kind in ("Array", "CompactArray"):
        letter = "a" if kind == "Array" else "A"
        if inner.startswith("types::Struct"):
            t = elem_type(structs[name][field])
            return f"'{letter}(' + S_{t}(version) + ')'"
        return f"'{letter}(' + {op_expr(inner, field, structs, name)} + ')'"
    raise ValueError(f"{name}.{field}: unknown decoder {kind}")


def translate(name, body, structs):
    """python source of a function S_<name>(version) -> layout string"""
    lines = body.split("\n")
    py = [f"def S_{name}(version):", "    ops = []", "    tags = []"]
    ind = 1
    field = None
    i = 0
    first = lines[0].strip()
    mv = re.match(r"if version < (-?\d+) \|\| version > (\d+) \{", first)
    if mv:
        py.append(f"    if version < {mv.group(1)} or version > {mv.group(2)}: return None")
        i = 3
    mv = re.match(r"if version != (\d+) \{", first)
    if mv:
        py.append(f"    if version != {mv.group(1)}: return None")
        i = 3
    in_tags = False
    while i < len(lines):
        l = lines[i].strip()
        i += 1
        pad = "    " * ind
        if not l:
            continue
        if l.startswith("let mut unknown_tagged_fields"):
            in_tags = True
            continue
        if in_tags:
            m = re.match(r"if (.*) \{$", l)
            if m and "num_tagged" not in l and ind == 1:
                py.append(f"{pad}if {cond(m.group(1))}:")
                py.append(f"{pad}    tags = []")
                ind += 1
                continue
            if l.startswith("let num_tagged_fields") or l.startswith("for _ in") or l.startswith("let tag:") \
                    or l.startswith("let size:") or l.startswith("match tag {"):
                continue
            m = re.match(r"(\d+) => \{$", l)
            if m:
                tag = m.group(1)
                # arm: collect until its closing brace at the arm's depth
                depth = 1
                arm = []
                while depth:
                    a = lines[i].strip()
                    i += 1
                    depth += a.count("{") - a.count("}")
                    if depth:
                        arm.append(a)
                py.append(f"{pad}def arm(version):")
                py.append(f"{pad}    ops = []")
                aind = ind + 1
                for a in arm:
                    apad = "    " * aind
                    m2 = re.match(r"if (.*) \{$", a)
                    if m2:
                        py.append(f"{apad}if {cond(m2.group(1))}:"); aind += 1; continue
                    if a == "} else {":
                        py.append(f"{'    ' * (aind - 1)}else:"); continue
                    if a == "}":
                        aind -= 1; continue
                    if a.startswith("bail!"):
                        py.append(f"{apad}return None"); continue
                    m2 = re.match(r"(\w+) = (types::.*)\.decode\(buf\)\?;$", a)
                    if m2:
                        py.append(f"{apad}ops.append({op_expr(m2.group(2), m2.group(1), structs, name)})"); continue
                    raise ValueError(f"{name}: tagged arm line {a!r}")
                py.append(f"{pad}    return ' '.join(ops)")
                py.append(f"{pad}r = arm(version)")
                py.append(f"{pad}tags.append('{tag}(' + r + ')' if r is not None else '{tag}!')")
                continue
            if l.startswith("_ => {"):
                # unknown tags: the rest of the match; emit the section
                py.append(f"{pad}ops.append('t{{' + ' '.join(tags) + '}}')")
                break
            if l.startswith("let unknown_value"):
                py.append(f"{pad}ops.append('t{{' + ' '.join(tags) + '}}')")
                break
            raise ValueError(f"{name}: tagged line {l!r}")
        m = re.match(r"let (?:mut )?(\w+) = (None|Default::default\(\));$", l)
        if m:
            continue
        m = re.match(r"let (\w+) = if (.*) \{$", l)
        if m:
            field = m.group(1)
            py.append(f"{pad}if {cond(m.group(2))}:")
            ind += 1
            continue
        m = re.match(r"if (.*) \{$", l)
        if m:
            py.append(f"{pad}if {cond(m.group(1))}:")
            ind += 1
            continue
        m = re.match(r"\} else if (.*) \{$", l)
        if m:
            py.append(f"{'    ' * (ind - 1)}elif {cond(m.group(1))}:")
            continue
        if l == "} else {":
            py.append(f"{'    ' * (ind - 1)}else:")
            continue
        if l in ("}", "};"):
            py.append(f"{pad}pass")
            ind -= 1
            continue
        m = re.match(r"let (\w+) = (types::.*)\.decode\(buf\)\?;$", l)
        if m:
            py.append(f"{pad}ops.append({op_expr(m.group(2), m.group(1), structs, name)})")
            continue
        m = re.match(r"(types::.*)\.decode\(buf\)\?$", l)
        if m:
            py.append(f"{pad}ops.append({op_expr(m.group(1), field, structs, name)})")
            continue
        # a default value in an else branch
        py.append(f"{pad}pass")
    py.append("    return ' '.join(ops)")
    return "\n".join(py)


def merge_fixed(layout):
    toks = layout.split()
    out = []
    for t in toks:
        if t.isdigit() and out and out[-1].isdigit():
            out[-1] = str(int(out[-1]) + int(t))
        else:
            out.append(t)
    return " ".join(out)


def main():
    root = Path(sys.argv[1])
    msgs = (root / "src" / "messages.rs").read_text()
    keys = dict((n, int(v)) for n, v in re.findall(r"\n    (\w+) = (\d+),", msgs.split("pub enum ApiKey")[1].split("}")[0]))
    roots = {}
    for f in sorted((root / "src" / "messages").glob("*_request.rs")):
        # one namespace per file: struct names repeat across messages
        ns = {}
        src = f.read_text()
        structs = parse_structs(src)
        for name, body in decode_bodies(src).items():
            exec(translate(name, body, structs), ns)
        for name in decode_bodies(src):
            if name.endswith("Request"):
                roots[name] = ns[f"S_{name}"]
    rows = []
    for api, key in sorted(keys.items(), key=lambda kv: kv[1]):
        fn = roots.get(f"{api}Request")
        if fn is None:
            continue
        prev = None
        for v in range(0, 40):
            lay = fn(v)
            if lay is None:
                continue
            lay = merge_fixed(lay.replace("(", "( ").replace(")", " )").replace("{", "{ ").replace("}", " }"))
            lay = lay.replace("( ", "(").replace(" )", ")").replace("{ ", "{").replace(" }", "}")
            if prev and prev[3] == lay and prev[2] == v - 1:
                prev[2] = v
            else:
                prev = [key, v, v, lay, api]
                rows.append(prev)
    out = ["// @generated by broker/tools/gen_request_layouts.py from kafka-protocol's Decodable impls.",
           "// Do not edit by hand: re-run the script after upgrading the codec.",
           "",
           "/// (API key, first version, last version, layout of the request body).",
           "pub static LAYOUTS: &[(i16, i16, i16, &str)] = &["]
    for key, lo, hi, lay, api in rows:
        out.append(f"    // {api} v{lo}-{hi}")
        out.append(f"    ({key}, {lo}, {hi}, {lay!r}),".replace("'", '"'))
    out.append("];")
    dest = Path(__file__).resolve().parent.parent / "src" / "wire" / "layouts.rs"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text("\n".join(out) + "\n")
    print(f"{len(rows)} layouts for {len({r[0] for r in rows})} APIs -> {dest}")


main()
