//! `GET /` (the live dashboard) and `GET /changecast.js` (the browser client), both
//! compiled into the binary.

use warp::reply::{Reply, Response};

const INDEX_HTML: &str = include_str!("assets/index.html");
const CLIENT_JS: &str = include_str!("assets/changecast.js");

pub fn index() -> Response {
    with_cache(warp::reply::html(INDEX_HTML).into_response())
}

pub fn client_js() -> Response {
    let reply =
        warp::reply::with_header(CLIENT_JS, "content-type", "text/javascript; charset=utf-8");
    with_cache(reply.into_response())
}

fn with_cache(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        "cache-control",
        "no-cache".parse().expect("BUG: static header"),
    );
    // The page carries a token: it must not leak through the Referer header.
    headers.insert(
        "referrer-policy",
        "no-referrer".parse().expect("BUG: static header"),
    );
    response
}
