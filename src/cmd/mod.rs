//! One module per subcommand: its clap options and a `run` function that
//! calls into the library.

pub(crate) mod babel;
pub(crate) mod conf;
pub(crate) mod demo;
pub(crate) mod node;
pub(crate) mod registry;
pub(crate) mod status;
pub(crate) mod tunnel;
