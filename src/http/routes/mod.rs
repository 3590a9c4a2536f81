//! The two capabilities' routes: parse the request into the feature's
//! types, call the feature, map its error to an `ApiError`. The features
//! themselves never name HTTP.

pub(crate) mod locks;
pub(crate) mod transcriptions;
