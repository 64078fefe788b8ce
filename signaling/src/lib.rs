//! tandem's signaling core, sans-I/O: no sockets, no tasks, no clock reads, no thread RNG.
//!
//! The shell feeds inputs (`create_guest`, `connect`, `handle_event`, `handle_media`,
//! `handle_timeout`, …), each with `now`, and carries out what [`Core::poll_output`] returns
//! (socket emits, deliveries, closes, and [`MediaCommand`]s for the media server);
//! [`Core::poll_timeout`] says when to call `handle_timeout` next. Same inputs, same outputs:
//! tests drive time by hand.
//!
//! [`Core`] dispatches over parts that each own one kind of state: `sessions` (guests,
//! sockets, presence, limits), `matchmaker` (the match queue and blocks), `rooms` (chat),
//! `call` (calls), `stats` (counters and the live statistics' broadcast).

pub mod call;
pub mod cluster;
mod config;
mod core;
mod error;
pub mod files;
pub mod ids;
mod matchmaker;
mod output;
mod rooms;
mod sessions;
mod stats;
mod timers;
pub mod wire;

pub use crate::config::CoreConfig;
pub use crate::core::Core;
pub use crate::output::{CloseReason, JournalOp, Output, Target};
pub use crate::rooms::RECENT_MESSAGES;
pub use crate::sessions::{valid_username, GuestInfo};
pub use crate::stats::Counters;
pub use call::{CallStates, MediaCommand, MediaEvent};
pub use cluster::{ClusterMsg, MatchAnswer, MatchRequest};
pub use error::SignalError;
pub use ids::{CallId, ClientKey, ConnId, FileId, MessageId, NodeId, RoomId, SessionId};
pub use wire::{Ack, CallEndReason, CallState, ClientEvent, ServerEvent};
