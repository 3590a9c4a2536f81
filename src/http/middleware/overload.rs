//! Load shedding: past a fixed number of requests in flight, answer 503 at
//! once instead of queueing work the replica cannot finish in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, web};

use crate::http::error::ApiError;
use crate::metrics::Metrics;

/// Counts requests in flight against a cap.
#[derive(Debug)]
pub(crate) struct InFlightLimit {
    /// Requests holding a place now.
    current: AtomicUsize,
    /// `MAX_IN_FLIGHT`.
    max: usize,
}

/// Holds one place under the cap; gives it back when dropped, including when
/// the client goes away and actix drops the handler future.
struct Permit(Arc<InFlightLimit>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlightLimit {
    /// A cap of `max` requests in flight.
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            current: AtomicUsize::new(0),
            max,
        })
    }

    fn try_enter(self: &Arc<Self>) -> Option<Permit> {
        let previous = self.current.fetch_add(1, Ordering::AcqRel);
        let permit = Permit(Arc::clone(self));
        (previous < self.max).then_some(permit)
    }
}

/// Middleware for the protected routes: sheds past the cap.
pub(crate) async fn shed_overload(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let Some(limit) = req
        .app_data::<web::Data<Arc<InFlightLimit>>>()
        .map(|l| Arc::clone(l))
    else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let Some(_permit) = limit.try_enter() else {
        if let Some(metrics) = req.app_data::<web::Data<Metrics>>() {
            metrics.requests_shed.inc();
        }
        return Ok(req.error_response(ApiError::Unavailable(
            "the service is overloaded; retry shortly",
        )));
    };
    Ok(next.call(req).await?.map_into_boxed_body())
}
