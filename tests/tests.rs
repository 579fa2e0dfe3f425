//! The integration tests, compiled into one binary (as ripgrep does): the real CLI against real HTTP servers on
//! 127.0.0.1, with the helpers in `util`.

mod util;

mod ask;
mod captions;
mod cli;
mod cost;
mod export;
mod faults;
mod formats;
mod gateway;
mod incremental;
mod mcp;
mod pacing;
mod safety;
mod search;
mod serve;
mod shards;
mod storage;
