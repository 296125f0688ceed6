//! catalog: the shop's products and prices (bucket `catalog`). See docs/SHOP.md.
//!
//! - `POST /v1/products` `{"sku", "name", "price_cents"}` → 201 the product (creates
//!   or replaces by sku). A sku is 1–64 letters, digits, `-`, `_`; the name must not
//!   be empty; the price is a whole number of cents ≥ 0. Otherwise 400.
//! - `GET /v1/products` → 200 `{"products": [...]}` sorted by sku.
//! - `GET /v1/products/{sku}` → 200 the product, 404.
//!
//! Keys: `product/<sku>`.

use serde::{Deserialize, Serialize};
use shopkit::http::{Request, Response};
use shopkit::kv::Bucket;
use shopkit::support::wasip2::exports::http::incoming_handler::Guest;
use shopkit::support::wasip2::http::types::{IncomingRequest, ResponseOutparam};
use shopkit::{Error, Result};

/// Key prefix of products.
const PRODUCT: &str = "product/";

/// A product, as stored, accepted and answered.
#[derive(Serialize, Deserialize)]
struct Product {
    sku: String,
    name: String,
    price_cents: u64,
}

struct Catalog;

impl Guest for Catalog {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        shopkit::http::serve(request, out, route);
    }
}

fn route(req: &Request) -> Result<Response> {
    match (req.method(), req.segments().as_slice()) {
        ("POST", ["v1", "products"]) => put(req),
        ("GET", ["v1", "products"]) => list(),
        ("GET", ["v1", "products", sku]) => get(sku),
        _ => Err(shopkit::http::no_route()),
    }
}

fn put(req: &Request) -> Result<Response> {
    let mut product: Product = req.json()?;
    if !shopkit::valid_sku(&product.sku) {
        return Err(Error::bad_request(shopkit::SKU_RULE));
    }
    product.name = product.name.trim().to_string();
    if product.name.is_empty() {
        return Err(Error::bad_request("name is required"));
    }
    Bucket::open("catalog")?.set(&format!("{PRODUCT}{}", product.sku), &product)?;
    Ok(Response::json(201, &product)
        .with_header("location", format!("/v1/products/{}", product.sku)))
}

fn list() -> Result<Response> {
    let bucket = Bucket::open("catalog")?;
    let mut products = Vec::new();
    for key in bucket.keys()? {
        if key.starts_with(PRODUCT)
            && let Some(product) = bucket.get::<Product>(&key)?
        {
            products.push(product);
        }
    }
    products.sort_by(|a, b| a.sku.cmp(&b.sku));
    Ok(Response::ok(
        &shopkit::serde_json::json!({ "products": products }),
    ))
}

fn get(sku: &str) -> Result<Response> {
    let product: Option<Product> = if shopkit::valid_sku(sku) {
        Bucket::open("catalog")?.get(&format!("{PRODUCT}{sku}"))?
    } else {
        None
    };
    product
        .map(|p| Response::ok(&p))
        .ok_or_else(|| Error::not_found(format!("no product {sku}")))
}

shopkit::support::wasip2::http::proxy::export!(Catalog with_types_in shopkit::support::wasip2);
