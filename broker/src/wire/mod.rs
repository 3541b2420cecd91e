//! What arrives on a client socket before the codec sees it: the pre-decode guard and the
//! request layouts it walks.

pub mod guard;
mod layouts;
