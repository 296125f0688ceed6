//! users: the shop's user accounts (bucket `users`). See docs/SHOP.md.
//!
//! - `POST /v1/users` `{"name", "email"}` → 201 `{"id": "u<n>", "name", "email"}` and
//!   `location: /v1/users/u<n>`; ids come from an atomic counter. A missing or empty
//!   name or email → 400.
//! - `GET /v1/users/{id}` → 200 the user, 404.
//!
//! Keys: `user/<id>` (the user), `next-id` (the counter).

use serde::{Deserialize, Serialize};
use shopkit::http::{Request, Response};
use shopkit::kv::Bucket;
use shopkit::support::wasip2::exports::http::incoming_handler::Guest;
use shopkit::support::wasip2::http::types::{IncomingRequest, ResponseOutparam};
use shopkit::{Error, Result};

/// A user, as stored and as answered.
#[derive(Serialize, Deserialize)]
struct User {
    id: String,
    name: String,
    email: String,
}

/// The body of `POST /v1/users`.
#[derive(Deserialize)]
struct NewUser {
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
}

struct Users;

impl Guest for Users {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        shopkit::http::serve(request, out, route);
    }
}

fn route(req: &Request) -> Result<Response> {
    match (req.method(), req.segments().as_slice()) {
        ("POST", ["v1", "users"]) => create(req),
        ("GET", ["v1", "users", id]) => get(id),
        _ => Err(shopkit::http::no_route()),
    }
}

fn create(req: &Request) -> Result<Response> {
    let new: NewUser = req.json()?;
    let name = new.name.trim();
    let email = new.email.trim();
    if name.is_empty() {
        return Err(Error::bad_request("name is required"));
    }
    if email.is_empty() {
        return Err(Error::bad_request("email is required"));
    }
    let bucket = Bucket::open("users")?;
    let id = format!("u{}", bucket.increment("next-id", 1)?);
    let user = User {
        id,
        name: name.to_string(),
        email: email.to_string(),
    };
    bucket.set(&format!("user/{}", user.id), &user)?;
    let location = format!("/v1/users/{}", user.id);
    Ok(Response::json(201, &user).with_header("location", location))
}

fn get(id: &str) -> Result<Response> {
    let user: Option<User> = Bucket::open("users")?.get(&format!("user/{id}"))?;
    user.map(|u| Response::ok(&u))
        .ok_or_else(|| Error::not_found(format!("no user {id}")))
}

shopkit::support::wasip2::http::proxy::export!(Users with_types_in shopkit::support::wasip2);
