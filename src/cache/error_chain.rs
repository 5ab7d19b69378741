//! An error as one line with its causes, for the remote caches' warnings
//! (`http.rs`, `grpc.rs`) and the remote CLI's request errors: "transport error: connection refused".

/// An error with its causes ("transport error: connection refused").
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
