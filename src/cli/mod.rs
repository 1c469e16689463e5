//! What only the `uringws` binary uses (behind the default `cli` feature): the load
//! generator, which drives its sockets through the library's io_uring runtime, and the
//! publish/subscribe relay of `uringws broadcast`. Not part of the library's API.

pub mod broadcast;
pub mod load;

/// An error of a server subcommand, with a configuration error named by its flag: `flags`
/// maps `Config` field names to the subcommand's flags.
pub fn flag_error(e: crate::Error, flags: &[(&str, &str)]) -> String {
    match e {
        crate::Error::InvalidConfig {
            field,
            value,
            allowed,
        } => {
            let flag = flags
                .iter()
                .find(|(f, _)| *f == field)
                .map_or(field, |f| f.1);
            format!("invalid {flag} {value}: {allowed}")
        }
        e => e.to_string(),
    }
}
