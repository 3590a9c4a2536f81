//! Shrinks the header map of requests that may wait long.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::middleware::Next;

/// Middleware for routes whose requests may wait long (lock acquires wait
/// up to 120 s): moves the request's headers into a map of their own size.
///
/// actix-http gives every request a header map sized for 16 headers, about
/// 6.7 KB; a lock request carries five or six. Copying them (well under a
/// microsecond) frees about 5 KB per waiting request (bench/README.md,
/// "What moved the lock numbers"). actix reuses a request's head from a
/// pool, header map included: a map compacted for an earlier request is
/// left as it is. `head_mut` needs the only handle on the request: no
/// middleware above this one may keep a clone of it.
pub(crate) async fn compact_headers(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let headers = &mut req.head_mut().headers;
    if headers.capacity() > 2 * headers.len_keys() {
        let headers_now = std::mem::take(headers);
        let mut compact = HeaderMap::with_capacity(headers_now.len_keys());
        for (name, value) in headers_now {
            compact.append(name, value);
        }
        *headers = compact;
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use actix_web::middleware::from_fn;
    use actix_web::test as actix_test;
    use actix_web::{App, HttpRequest, HttpResponse, web};

    use super::compact_headers;

    #[actix_web::test]
    async fn compacting_keeps_every_header_and_repeated_value() {
        let app = actix_test::init_service(App::new().wrap(from_fn(compact_headers)).route(
            "/",
            web::post().to(|req: HttpRequest| async move {
                let mut seen: Vec<String> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.to_str().unwrap()))
                    .collect();
                seen.sort();
                HttpResponse::Ok().body(seen.join(","))
            }),
        ))
        .await;
        let mut request = actix_test::TestRequest::post()
            .uri("/")
            .insert_header(("content-type", "application/json"))
            .append_header(("x-repeated", "1"))
            .append_header(("x-repeated", "2"));
        for i in 0..20 {
            request = request.insert_header((format!("x-h{i:02}"), i.to_string()));
        }
        let body = actix_test::call_and_read_body(&app, request.to_request()).await;
        let body = String::from_utf8(body.to_vec()).unwrap();
        let seen: Vec<&str> = body.split(',').collect();
        assert_eq!(seen.len(), 23, "{body}");
        assert!(seen.contains(&"content-type=application/json"));
        assert!(seen.contains(&"x-repeated=1") && seen.contains(&"x-repeated=2"));
        assert!(seen.contains(&"x-h19=19"));
    }

    #[actix_web::test]
    async fn a_request_keeps_room_for_its_own_headers_only() {
        let app = actix_test::init_service(App::new().wrap(from_fn(compact_headers)).route(
            "/",
            web::post().to(|req: HttpRequest| async move {
                HttpResponse::Ok().body(req.headers().capacity().to_string())
            }),
        ))
        .await;
        let request = actix_test::TestRequest::post()
            .uri("/")
            .insert_header(("content-type", "application/json"))
            .insert_header(("authorization", "Bearer k"))
            .to_request();
        let body = actix_test::call_and_read_body(&app, request).await;
        let capacity: usize = String::from_utf8(body.to_vec()).unwrap().parse().unwrap();
        // actix makes room for 16 headers in every new request's map.
        assert!(capacity < 16, "room for {capacity} headers");
    }
}
