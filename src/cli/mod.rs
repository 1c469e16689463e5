//! What only the `uringws` binary uses (behind the default `cli` feature): the load
//! generator, which drives its sockets through the library's io_uring runtime. Not part of
//! the library's API.

pub mod load;
