//! `GET /` (the live dashboard), `GET /changecast.js` (the browser client) and
//! `GET /changecast.d.ts` (its TypeScript declarations), all compiled into the binary.
//!
//! One client source serves both ways of loading it: a classic `<script>` cannot contain
//! `export`, an ES module import needs it. Module loaders fetch in CORS mode, classic
//! scripts in no-cors mode, and browsers say which in `Sec-Fetch-Mode`; so module requests
//! get the file with an `export` trailer, everything else the file as it is (a UMD script,
//! which is also what `curl` and bundlers get). `?format=module|script` overrides.

use warp::http::HeaderMap;
use warp::reply::{Reply, Response};

use super::error::ApiError;

const INDEX_HTML: &str = include_str!("assets/index.html");
const CLIENT_JS: &str = include_str!("assets/changecast.js");
const CLIENT_DTS: &str = include_str!("assets/changecast.d.ts");
/// Appended for module loaders: the UMD body has set `globalThis.Changecast`.
const MODULE_TRAILER: &str =
    "\nconst Changecast = globalThis.Changecast;\nexport { Changecast };\nexport default Changecast;\n";

pub fn index() -> Response {
    with_cache(warp::reply::html(INDEX_HTML).into_response())
}

/// Which form of the client a request wants.
#[derive(Debug, PartialEq, Eq)]
enum Form {
    Module,
    Script,
}

/// The form asked for; an unknown `format` is refused rather than guessed. (Other
/// query parameters, such as cache busters, are a static file's business, not ours.)
fn form(headers: &HeaderMap, query: Option<&str>) -> Result<Form, ApiError> {
    let asked = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("format="));
    match asked {
        Some("module" | "esm") => return Ok(Form::Module),
        Some("script" | "umd") => return Ok(Form::Script),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_format",
                "`format` is `module` or `script`",
            ))
        }
        None => {}
    }
    let mode = headers.get("sec-fetch-mode").and_then(|v| v.to_str().ok());
    let dest = headers.get("sec-fetch-dest").and_then(|v| v.to_str().ok());
    Ok(match (mode, dest) {
        (Some("cors"), Some("script")) => Form::Module,
        _ => Form::Script,
    })
}

pub fn client_js(headers: HeaderMap, query: Option<String>) -> Response {
    let body = match form(&headers, query.as_deref()) {
        Ok(Form::Module) => format!("{CLIENT_JS}{MODULE_TRAILER}"),
        Ok(Form::Script) => CLIENT_JS.to_owned(),
        Err(error) => return error.into_response(),
    };
    let reply = warp::reply::with_header(body, "content-type", "text/javascript; charset=utf-8");
    let mut response = with_cache(reply.into_response());
    // Caches must keep the two forms apart.
    response.headers_mut().insert(
        "vary",
        "Sec-Fetch-Mode, Sec-Fetch-Dest"
            .parse()
            .expect("BUG: static header"),
    );
    response
}

pub fn client_dts() -> Response {
    let reply = warp::reply::with_header(
        CLIENT_DTS,
        "content-type",
        "application/typescript; charset=utf-8",
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn module_loaders_get_exports_and_classic_scripts_do_not() {
        let module = headers(&[("sec-fetch-mode", "cors"), ("sec-fetch-dest", "script")]);
        let classic = headers(&[("sec-fetch-mode", "no-cors"), ("sec-fetch-dest", "script")]);
        assert_eq!(form(&module, None).unwrap(), Form::Module);
        assert_eq!(form(&classic, None).unwrap(), Form::Script);
        // No fetch metadata (curl, old browsers, plain-http origins): the classic form.
        assert_eq!(form(&HeaderMap::new(), None).unwrap(), Form::Script);
        assert_eq!(form(&classic, Some("format=module")).unwrap(), Form::Module);
        assert_eq!(
            form(&module, Some("v=2&format=script")).unwrap(),
            Form::Script
        );
        assert_eq!(
            form(&module, Some("format=amd")).unwrap_err().code,
            "invalid_format"
        );
    }

    #[test]
    fn only_the_module_form_exports() {
        assert!(!CLIENT_JS.contains("\nexport "));
        assert!(MODULE_TRAILER.contains("export { Changecast }"));
    }
}
