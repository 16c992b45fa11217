//! The longest value of each attribute, in bytes. A FailedEvent keeps the event whole, and its
//! schema bounds every string (so that a current API server can estimate the cost of its CEL
//! rules): an event that passes ingest always fits there.

/// `id`.
pub const ID: usize = 1024;
/// `source`, `subject`, `dataschema` and each extension value.
pub const URI: usize = 2048;
/// `type`.
pub const TYPE: usize = 1024;
/// `time`.
pub const TIME: usize = 64;
/// `datacontenttype`.
pub const MEDIA_TYPE: usize = 256;
/// Extension attributes on one event.
pub const EXTENSIONS: usize = 64;
/// The largest payload, so that an event kept in a FailedEvent stays well under etcd's
/// 1.5 MiB object limit (`--max-event-bytes` may not exceed it).
pub const DATA: usize = 1024 * 1024;
/// `data_base64` of a [`DATA`]-byte payload.
pub const DATA_BASE64: usize = DATA.div_ceil(3) * 4;
