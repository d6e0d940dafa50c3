//! The names an expression may use ([`Scope`]) and what it turned out to
//! refer to ([`Refs`]), shared by name resolution and the compilers.

use crate::catalog::Table;
use crate::config::Options;

/// What an expression refers to.
#[derive(Default, Debug)]
pub struct Refs {
    pub columns: Vec<String>,
    pub bucket_params: Vec<String>,
    pub request: bool,
    /// Values the client chooses (`request.parameters()`, `user_parameters.*`).
    pub client_params: bool,
    /// Values from the signed token (`request.user_id()`, `request.jwt()`, `token_parameters.*`).
    pub token_params: bool,
    /// `value` of a `json_each` source.
    pub json_each: bool,
}

impl Refs {
    pub fn merge(&mut self, o: Refs) {
        self.columns.extend(o.columns);
        self.bucket_params.extend(o.bucket_params);
        self.request |= o.request;
        self.client_params |= o.client_params;
        self.token_params |= o.token_params;
        self.json_each |= o.json_each;
    }
}

/// The names an expression may use.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    /// The table read and the alias its columns are qualified with.
    pub table: Option<(&'a Table, &'a str)>,
    /// The alias of a `json_each(...)` source, whose rows have a `value`.
    pub json_each: Option<&'a str>,
    pub options: &'a Options,
}

/// The SQL alias of a `json_each` source's elements (`outpost._elements`).
pub const JSON_EACH_SQL: &str = "_outpost_je";
