//! The read-only configuration set by the collector before load.

use tracer_common::config::Config;

/// Replaced by the collector through `EbpfLoader::override_global`; the verifier sees its fields
/// as constants because the map holding it is frozen.
#[unsafe(no_mangle)]
pub(crate) static CONFIG: Config = Config::new();

/// Reads one field of [`CONFIG`], e.g. `conf!(offsets.skb_head)`. The volatile read keeps the
/// compiler from folding in the placeholder value above.
macro_rules! conf {
    ($($field:ident).+) => {
        // SAFETY: a field of `CONFIG`, a static that is never written.
        unsafe { core::ptr::read_volatile(&raw const $crate::config::CONFIG.$($field).+) }
    };
}
pub(crate) use conf;
