//! Kernel structure offsets from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations, so the programs are handed every offset they need as
//! a read-only global. The offsets are resolved here, from `/sys/kernel/btf/vmlinux` (and the
//! `nf_conntrack` module's split BTF when conntrack is a module), and checked for the sizes the
//! programs assume. Members inside anonymous structs and unions are found as C would find them.

use std::{collections::HashMap, path::Path};

use btf_rs::{Backend, Btf, Type};
use tracer_common::config::{KernelOffsets, OFFSET_UNKNOWN};

/// Where the kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Split BTF of the conntrack module, when conntrack is not built in.
const CONNTRACK_BTF: &str = "/sys/kernel/btf/nf_conntrack";
/// `sizeof(struct nf_conntrack_tuple)` that the programs copy.
const CT_TUPLE_SIZE: u32 = tracer_common::wire::conntrack::TUPLE_SIZE as u32;

/// Why offsets could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("failed to read kernel BTF from {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("kernel BTF has no {0}")]
    Missing(String),
    #[error("kernel BTF: {member} is {actual} bytes, expected {expected}")]
    Size {
        member: String,
        actual: u32,
        expected: u32,
    },
    #[error("kernel BTF: {0}")]
    Format(#[from] btf_rs::Error),
}

/// Offsets for the programs, and what could not be found.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub offsets: KernelOffsets,
    /// Why conntrack tuples will not be read, when they will not.
    pub conntrack_unavailable: Option<String>,
    /// Names of `enum skb_drop_reason` values, without the `SKB_DROP_REASON_` prefix.
    pub drop_reasons: HashMap<u32, String>,
}

/// Reads the kernel's BTF (the running kernel's, or `vmlinux` when given), resolves every
/// offset the programs use, and finds the type ids of `targets` (see [`attach_btf`]).
pub fn resolve_kernel(
    vmlinux: Option<&Path>,
    targets: &[Attach],
) -> Result<(Resolved, aya::Btf), BtfError> {
    let vmlinux = load_base(vmlinux.unwrap_or(Path::new(VMLINUX_BTF)))?;
    let conntrack = Path::new(CONNTRACK_BTF)
        .exists()
        .then(|| load_split(Path::new(CONNTRACK_BTF), &vmlinux))
        .transpose()?;
    Ok((
        resolve(&vmlinux, conntrack.as_ref())?,
        attach_btf(&vmlinux, targets)?,
    ))
}

/// What a BTF-typed program is loaded against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A `tp_btf` program on this tracepoint: the kernel's `btf_trace_<name>` typedef.
    Tracepoint(&'static str),
    /// An `fentry` program on this function of the kernel image.
    Function(&'static str),
}

impl Attach {
    /// The type's name in the kernel's BTF, and its kind there (`BTF_KIND_*`).
    fn btf_type(self) -> (String, u32) {
        match self {
            Attach::Tracepoint(name) => (format!("btf_trace_{name}"), KIND_TYPEDEF),
            Attach::Function(name) => (name.to_owned(), KIND_FUNC),
        }
    }
}

/// `BTF_KIND_*` values (include/uapi/linux/btf.h).
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;

/// A BTF that gives aya the kernel's type ids of `targets`, and nothing else.
///
/// aya 0.14 loads a `tp_btf` or `fentry` program against a parsed `aya::Btf`, from which it
/// takes one thing: the id of the target's type, found by name and kind, a type's id being its
/// position. Parsed by aya, the whole kernel BTF held about 19 MiB for those few ids, and was
/// the peak of a small trace's memory (bench/limits.md). This one has each target at the id the
/// kernel gave it, found through the mapped BTF, and an empty forward declaration at every id
/// before it: 12 bytes each here, one `BtfType` each once aya has parsed it. A target the
/// kernel image does not have (a module's function) is left out, so aya refuses to load its
/// program as it would with the whole BTF.
pub fn attach_btf(vmlinux: &Btf, targets: &[Attach]) -> Result<aya::Btf, BtfError> {
    let mut named = std::collections::BTreeMap::new();
    for &target in targets {
        let (name, kind) = target.btf_type();
        for id in vmlinux.resolve_ids_by_name(&name).unwrap_or_default() {
            let found = match vmlinux.resolve_type_by_id(id)? {
                Type::Typedef(_) => KIND_TYPEDEF,
                Type::Func(_) => KIND_FUNC,
                _ => continue,
            };
            if found == kind {
                named.insert(id, (kind, name));
                break;
            }
        }
    }
    let last = named.keys().next_back().copied().unwrap_or(0);
    let mut types = Vec::with_capacity(last as usize * 12);
    let mut strings = vec![0u8];
    for id in 1..=last {
        // name offset, kind (bits 24-28), and the type the entry refers to (void).
        let (name_offset, kind) = match named.get(&id) {
            Some((kind, name)) => {
                let offset = strings.len() as u32;
                strings.extend_from_slice(name.as_bytes());
                strings.push(0);
                (offset, *kind)
            }
            None => (0, KIND_FWD),
        };
        for word in [name_offset, kind << 24, 0] {
            types.extend_from_slice(&word.to_ne_bytes());
        }
    }
    const HEADER_LEN: u32 = 24;
    let mut blob = Vec::with_capacity(HEADER_LEN as usize + types.len() + strings.len());
    blob.extend_from_slice(&0xeb9f_u16.to_ne_bytes());
    blob.extend_from_slice(&[1, 0]); // version, flags
    for word in [
        HEADER_LEN,
        0, // types' offset
        types.len() as u32,
        types.len() as u32, // strings' offset
        strings.len() as u32,
    ] {
        blob.extend_from_slice(&word.to_ne_bytes());
    }
    blob.extend_from_slice(&types);
    drop(types);
    blob.extend_from_slice(&strings);
    aya::Btf::parse(&blob, aya::Endianness::default()).map_err(|err| BtfError::Read {
        path: "the BTF built for loading the programs".to_owned(),
        reason: err.to_string(),
    })
}

/// The kernel's BTF, mapped rather than parsed: btf-rs's mmap backend keeps an index of where
/// each type starts and reads a type where it is looked up. Parsed whole, the 5 MiB of a
/// kernel's BTF took 25 MiB more and were the peak of tracer's memory (bench/limits.md); the
/// few dozen lookups here do not need that. A kernel that cannot map its BTF file (before
/// Linux 6.16) has it copied into a memory file, which is mapped instead.
fn load_base(path: &Path) -> Result<Btf, BtfError> {
    match Btf::from_file_with_backend(path, Backend::Mmap) {
        Ok(btf) => Ok(btf),
        Err(_) => load_copied(path),
    }
}

/// [`load_base`] through a copy of the file in memory.
fn load_copied(path: &Path) -> Result<Btf, BtfError> {
    let read_error = |err: &dyn std::fmt::Display| BtfError::Read {
        path: path.display().to_string(),
        reason: err.to_string(),
    };
    let bytes = std::fs::read(path).map_err(|err| read_error(&err))?;
    let copy = memory_file(&bytes).map_err(|err| read_error(&err))?;
    let copy_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&copy));
    Btf::from_file_with_backend(&copy_path, Backend::Mmap)
        .map_err(|err| read_error(&innermost(&err)))
}

/// An anonymous memory file holding `bytes`.
fn memory_file(bytes: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::Write as _;
    let fd = nix::sys::memfd::memfd_create("tracer-btf", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    Ok(file)
}

/// A module's split BTF on top of `base`, parsed (a module's is small).
fn load_split(path: &Path, base: &Btf) -> Result<Btf, BtfError> {
    // Read whole first: parsing through a file costs a seek system call per type (a tenth of
    // start-up, measured with `perf record`).
    let bytes = std::fs::read(path).map_err(|err| BtfError::Read {
        path: path.display().to_string(),
        reason: err.to_string(),
    })?;
    Btf::from_split_bytes(&bytes, base).map_err(|err| BtfError::Read {
        path: path.display().to_string(),
        reason: innermost(&err),
    })
}

/// btf-rs wraps I/O errors; the innermost message is the useful one.
fn innermost(err: &btf_rs::Error) -> String {
    let mut reason: &dyn std::error::Error = err;
    while let Some(inner) = reason.source() {
        reason = inner;
    }
    reason.to_string()
}

/// Resolves the offsets from `vmlinux` (and `conntrack`, a module's split BTF, if given).
pub fn resolve(vmlinux: &Btf, conntrack: Option<&Btf>) -> Result<Resolved, BtfError> {
    let k = Kernel(vmlinux);
    let mut o = KernelOffsets::unknown();
    o.skb_head = k.member("sk_buff", "head", 8)?;
    o.skb_data = k.member("sk_buff", "data", 8)?;
    o.skb_len = k.member("sk_buff", "len", 4)?;
    o.skb_data_len = k.member("sk_buff", "data_len", 4)?;
    o.skb_protocol = k.member("sk_buff", "protocol", 2)?;
    o.skb_network_header = k.member("sk_buff", "network_header", 2)?;
    o.skb_dev = k.member("sk_buff", "dev", 8)?;
    o.skb_mark = k.member("sk_buff", "mark", 4)?;
    o.dev_ifindex = k.member("net_device", "ifindex", 4)?;
    o.dev_name = k.member("net_device", "name", 16)?;
    o.dev_net = k.member("net_device", "nd_net.net", 8)?;
    o.net_inum = k.member("net", "ns.inum", 4)?;
    // Optional: without them, packets are not tied to their sockets' processes.
    o.skb_sk = k.member("sk_buff", "sk", 8).unwrap_or(OFFSET_UNKNOWN);
    o.sk_cookie = k
        .member("sock", "__sk_common.skc_cookie", 8)
        .unwrap_or(OFFSET_UNKNOWN);
    // Only in kernels built with IPVS (CONFIG_IP_VS): without it no packet is IPVS's.
    o.skb_ipvs_property = k.flag("sk_buff", "ipvs_property").unwrap_or(OFFSET_UNKNOWN);

    let conntrack_unavailable = match resolve_conntrack(vmlinux, conntrack, &mut o) {
        Ok(()) => None,
        Err(err) => {
            o.skb_nfct = OFFSET_UNKNOWN;
            Some(err.to_string())
        }
    };
    Ok(Resolved {
        offsets: o,
        conntrack_unavailable,
        drop_reasons: drop_reasons(vmlinux),
    })
}

/// The running kernel's drop reasons, for naming those of a recording made here; empty when
/// its BTF cannot be read.
pub fn running_drop_reasons() -> HashMap<u32, String> {
    load_base(Path::new(VMLINUX_BTF))
        .map(|btf| drop_reasons(&btf))
        .unwrap_or_default()
}

/// `enum skb_drop_reason` (include/net/dropreason-core.h) as the running kernel defines it:
/// values are renumbered between versions, so names are never compiled in.
pub fn drop_reasons(btf: &Btf) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    let types = btf
        .resolve_types_by_name("skb_drop_reason")
        .unwrap_or_default();
    for ty in types {
        if let Type::Enum(e) = ty {
            for member in &e.members {
                if let Ok(name) = btf.resolve_name(member) {
                    let short = name.strip_prefix("SKB_DROP_REASON_").unwrap_or(&name);
                    names.insert(member.val(), short.to_owned());
                }
            }
        }
    }
    names
}

fn resolve_conntrack(
    vmlinux: &Btf,
    conntrack: Option<&Btf>,
    o: &mut KernelOffsets,
) -> Result<(), BtfError> {
    o.skb_nfct = Kernel(vmlinux).member("sk_buff", "_nfct", 8)?;
    // nf_conn lives in vmlinux when conntrack is built in, in the module's BTF otherwise.
    let k = match conntrack {
        Some(module) if Kernel(vmlinux).find_struct("nf_conn").is_err() => Kernel(module),
        _ => Kernel(vmlinux),
    };
    let tuple_size = k.struct_size("nf_conntrack_tuple")?;
    if tuple_size != CT_TUPLE_SIZE {
        return Err(BtfError::Size {
            member: "struct nf_conntrack_tuple".into(),
            actual: tuple_size,
            expected: CT_TUPLE_SIZE,
        });
    }
    o.ct_tuple_orig = k.member("nf_conn", "tuplehash[0].tuple", tuple_size)?;
    o.ct_tuple_reply = k.member("nf_conn", "tuplehash[1].tuple", tuple_size)?;
    o.tuple_src_addr = k.member("nf_conntrack_tuple", "src.u3", 16)?;
    o.tuple_src_port = k.member("nf_conntrack_tuple", "src.u.all", 2)?;
    o.tuple_l3num = k.member("nf_conntrack_tuple", "src.l3num", 2)?;
    o.tuple_dst_addr = k.member("nf_conntrack_tuple", "dst.u3", 16)?;
    o.tuple_dst_port = k.member("nf_conntrack_tuple", "dst.u.all", 2)?;
    o.tuple_protonum = k.member("nf_conntrack_tuple", "dst.protonum", 1)?;
    Ok(())
}

/// Offset lookups in one BTF object.
struct Kernel<'a>(&'a Btf);

impl Kernel<'_> {
    /// Byte offset of `path` (`a.b[1].c`) in `struct name`, checking the member's size.
    fn member(&self, name: &str, path: &str, size: u32) -> Result<u32, BtfError> {
        let mut ty = Type::Struct(self.find_struct(name)?);
        let mut offset = 0;
        for component in path.split('.') {
            let (field, index) = parse_component(component);
            let missing = || BtfError::Missing(format!("struct {name} member {path}"));
            let (member_offset, member_ty) = self.find_member(&ty, field)?.ok_or_else(missing)?;
            offset += member_offset;
            ty = self.strip(member_ty)?;
            if let Some(index) = index {
                let Type::Array(array) = &ty else {
                    return Err(missing());
                };
                if index >= array.len() as u32 {
                    return Err(missing());
                }
                let element = self.strip(self.0.resolve_chained_type(array)?)?;
                offset += index * self.size_of(&element)?;
                ty = element;
            }
        }
        let actual = self.size_of(&ty)?;
        if actual != size {
            return Err(BtfError::Size {
                member: format!("{name}.{path}"),
                actual,
                expected: size,
            });
        }
        Ok(offset)
    }

    fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        Ok(self.find_struct(name)?.size() as u32)
    }

    fn find_struct(&self, name: &str) -> Result<btf_rs::Struct, BtfError> {
        self.0
            .resolve_types_by_name(name)
            .unwrap_or_default()
            .into_iter()
            .find_map(|ty| match ty {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::Missing(format!("struct {name}")))
    }

    /// Finds `field` among the members of a struct or union, descending into anonymous members.
    /// Returns its byte offset and type.
    fn find_member(&self, ty: &Type, field: &str) -> Result<Option<(u32, Type)>, BtfError> {
        Ok(self
            .find_member_bits(ty, field)?
            .map(|(bits, _, member_ty)| (bits / 8, member_ty)))
    }

    /// [`Self::find_member`] in bits, with the member's bitfield size (None when it is not a
    /// bitfield), looking into anonymous structures and unions.
    fn find_member_bits(
        &self,
        ty: &Type,
        field: &str,
    ) -> Result<Option<(u32, Option<u32>, Type)>, BtfError> {
        let (Type::Struct(s) | Type::Union(s)) = ty else {
            return Ok(None);
        };
        for member in &s.members {
            let offset = member.bit_offset();
            let name = self.0.resolve_name(member).unwrap_or_default();
            let member_ty = self.0.resolve_chained_type(member)?;
            if name == field {
                let bits = member.bitfield_size().filter(|&bits| bits != 0);
                return Ok(Some((offset, bits, member_ty)));
            }
            if name.is_empty()
                && let Some((inner, bits, found)) =
                    self.find_member_bits(&self.strip(member_ty)?, field)?
            {
                return Ok(Some((offset + inner, bits, found)));
            }
        }
        Ok(None)
    }

    /// Bit offset of the one-bit flag `field` of `struct name`.
    fn flag(&self, name: &str, field: &str) -> Result<u32, BtfError> {
        let ty = Type::Struct(self.find_struct(name)?);
        match self.find_member_bits(&ty, field)? {
            Some((offset, Some(1), _)) => Ok(offset),
            Some(_) => Err(BtfError::Missing(format!(
                "struct {name} member {field} as a one-bit field"
            ))),
            None => Err(BtfError::Missing(format!("struct {name} member {field}"))),
        }
    }

    /// Follows typedefs and qualifiers down to the underlying type.
    fn strip(&self, mut ty: Type) -> Result<Type, BtfError> {
        loop {
            ty = match &ty {
                Type::Typedef(t) => self.0.resolve_chained_type(t)?,
                Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => {
                    self.0.resolve_chained_type(t)?
                }
                Type::TypeTag(t) => self.0.resolve_chained_type(t)?,
                _ => return Ok(ty),
            };
        }
    }

    fn size_of(&self, ty: &Type) -> Result<u32, BtfError> {
        Ok(match self.strip(ty.clone())? {
            Type::Int(i) => i.size() as u32,
            Type::Ptr(_) => 8,
            Type::Enum(e) => e.size() as u32,
            Type::Enum64(e) => e.size() as u32,
            Type::Struct(s) | Type::Union(s) => s.size() as u32,
            Type::Array(a) => {
                let element = self.0.resolve_chained_type(&a)?;
                a.len() as u32 * self.size_of(&element)?
            }
            other => {
                return Err(BtfError::Missing(format!(
                    "size of a {} type",
                    other.name()
                )));
            }
        })
    }
}

/// Splits `name[3]` into `("name", Some(3))`.
fn parse_component(component: &str) -> (&str, Option<u32>) {
    match component.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse().ok()),
        None => (component, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_with_and_without_index() {
        assert_eq!(parse_component("tuplehash[1]"), ("tuplehash", Some(1)));
        assert_eq!(parse_component("head"), ("head", None));
    }

    /// The running kernel's BTF gives the same offsets and drop reasons mapped (as this kernel
    /// allows) and copied into memory (as older kernels need).
    #[test]
    fn mapped_and_copied_btf_agree() {
        let path = Path::new(VMLINUX_BTF);
        let mapped = resolve(&load_base(path).unwrap(), None).unwrap();
        let copied = resolve(&load_copied(path).unwrap(), None).unwrap();
        assert_eq!(mapped.offsets, copied.offsets);
        assert_eq!(mapped.drop_reasons, copied.drop_reasons);
        assert_ne!(mapped.offsets.skb_len, OFFSET_UNKNOWN);
        assert!(!mapped.drop_reasons.is_empty());
    }

    /// aya finds every target in the built BTF at the id it has in the whole kernel BTF, and a
    /// name of the wrong kind, or one the kernel does not have, not at all.
    #[test]
    fn the_attach_btf_gives_the_kernels_ids() {
        use aya_obj::btf::BtfKind;
        let targets = [
            Attach::Tracepoint("net_dev_queue"),
            Attach::Tracepoint("kfree_skb"),
            Attach::Tracepoint("netif_receive_skb"),
            Attach::Function("ip_rcv"),
            Attach::Function("no_such_function_in_any_kernel"),
        ];
        let mapped = load_base(Path::new(VMLINUX_BTF)).unwrap();
        let small = attach_btf(&mapped, &targets).unwrap();
        let whole = aya::Btf::from_sys_fs().unwrap();
        let id = |btf: &aya::Btf, name: &str, kind| btf.id_by_type_name_kind(name, kind).ok();
        for (name, kind) in [
            ("btf_trace_net_dev_queue", BtfKind::Typedef),
            ("btf_trace_kfree_skb", BtfKind::Typedef),
            ("btf_trace_netif_receive_skb", BtfKind::Typedef),
            ("ip_rcv", BtfKind::Func),
        ] {
            let expected = id(&whole, name, kind);
            assert!(expected.is_some_and(|id| id > 1000), "{name}: {expected:?}");
            assert_eq!(id(&small, name, kind), expected, "{name}");
        }
        assert_eq!(
            id(&small, "no_such_function_in_any_kernel", BtfKind::Func),
            None
        );
        // A function asked for as a tracepoint's typedef is not one.
        assert_eq!(id(&small, "ip_rcv", BtfKind::Typedef), None);
        assert_eq!(id(&small, "btf_trace_netif_rx", BtfKind::Typedef), None);
    }
}
