//! Byte offsets of the few kernel structure fields the programs read to find
//! a packet's network namespace (see `sg_common::endpoint::GLOBAL_OFF_SKB_DEV`),
//! from the kernel's own BTF (`/sys/kernel/btf/vmlinux`). A small reader of
//! the BTF format: types are walked once, members looked up by name through
//! anonymous structs and unions.

use std::{collections::HashMap, io, path::Path};

use sg_common::endpoint::{
    GLOBAL_OFF_DEV_NET, GLOBAL_OFF_NET_COOKIE, GLOBAL_OFF_RXQ_DEV, GLOBAL_OFF_SKB_DEV,
    GLOBAL_OFF_XDP_RXQ,
};

/// The kernel's BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

struct Type {
    name: u32,
    kind: u32,
    kind_flag: bool,
    /// size, or the referenced type for modifiers and typedefs.
    size_or_type: u32,
    /// (name offset, type id, offset word) of struct/union members.
    members: Vec<(u32, u32, u32)>,
}

struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<String, u32>,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("kernel BTF: {what}"))
}

fn u32_at(b: &[u8], at: usize) -> io::Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| bad("truncated"))
}

impl Btf {
    fn parse(data: &[u8]) -> io::Result<Btf> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != 0xeb9f {
            return Err(bad("not BTF (magic)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types_bytes = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(|| bad("type section"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| bad("string section"))?
            .to_vec();
        // Type id 0 is void.
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            kind_flag: false,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < types_bytes.len() {
            let name = u32_at(types_bytes, at)?;
            let info = u32_at(types_bytes, at + 4)?;
            let size_or_type = u32_at(types_bytes, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4, // int, var, decl_tag
                3 => 12,          // array
                4 | 5 => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        members.push((
                            u32_at(types_bytes, m)?,
                            u32_at(types_bytes, m + 4)?,
                            u32_at(types_bytes, m + 8)?,
                        ));
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,   // enum, func_proto
                15 | 19 => vlen * 12, // datasec, enum64
                _ => 0,
            };
            at += extra;
            types.push(Type {
                name,
                kind,
                kind_flag: info >> 31 == 1,
                size_or_type,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name != 0 {
                let name = btf.string(t.name).to_string();
                btf.by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..16 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Bit offset of `member` in `t`, looking through anonymous members.
    fn member_bits(&self, t: &Type, member: &str) -> Option<u32> {
        for &(name, ty, off) in &t.members {
            let bits = if t.kind_flag { off & 0x00ff_ffff } else { off };
            if name != 0 {
                if self.string(name) == member {
                    return Some(bits);
                }
                continue;
            }
            let inner = self.resolve(ty)?;
            if (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
                && let Some(b) = self.member_bits(inner, member)
            {
                return Some(bits + b);
            }
        }
        None
    }

    fn offset(&self, strukt: &str, member: &str) -> io::Result<u32> {
        let id = *self
            .by_name
            .get(strukt)
            .ok_or_else(|| bad(&format!("no struct {strukt}")))?;
        let t = &self.types[id as usize];
        let bits = self
            .member_bits(t, member)
            .ok_or_else(|| bad(&format!("no member {strukt}.{member}")))?;
        if bits % 8 != 0 {
            return Err(bad(&format!("{strukt}.{member} is a bit field")));
        }
        Ok(bits / 8)
    }
}

/// (global name, byte offset) for every offset the programs need.
///
/// # Errors
/// The kernel has no BTF, or its structures lack one of the fields
/// (a kernel without network namespaces).
pub fn offsets() -> io::Result<Vec<(&'static str, u32)>> {
    let data = std::fs::read(Path::new(VMLINUX_BTF)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("reading {VMLINUX_BTF}: {e}; the kernel needs BTF (CONFIG_DEBUG_INFO_BTF)"),
        )
    })?;
    let btf = Btf::parse(&data)?;
    Ok(vec![
        (GLOBAL_OFF_SKB_DEV, btf.offset("sk_buff", "dev")?),
        (GLOBAL_OFF_XDP_RXQ, btf.offset("xdp_buff", "rxq")?),
        (GLOBAL_OFF_RXQ_DEV, btf.offset("xdp_rxq_info", "dev")?),
        (GLOBAL_OFF_DEV_NET, btf.offset("net_device", "nd_net")?),
        (GLOBAL_OFF_NET_COOKIE, btf.offset("net", "net_cookie")?),
    ])
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_kernel_has_every_offset() {
        if !std::path::Path::new(super::VMLINUX_BTF).exists() {
            eprintln!("skipping: no {}", super::VMLINUX_BTF);
            return;
        }
        let offsets = super::offsets().expect("offsets");
        assert_eq!(offsets.len(), 5);
        // sk_buff.dev follows next and prev (two pointers).
        assert_eq!(offsets[0].1, 16, "{offsets:?}");
    }
}
