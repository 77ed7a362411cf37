//! [`ContextLayer`]: a tower layer that runs each HTTP request inside a context (feature `tower`).

use std::task::{Context as TaskContext, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::{Context, WithContext, current_context, enter_context_replaced, with_context_replaced};

/// A tower [`Layer`] that computes a [`Context`] from each request and runs the request's
/// handling inside it: every write the handler makes through a bemi connection wrapper carries
/// it. Works with axum, tonic and anything built on tower.
///
/// The context is merged over the one active where the request is dispatched (so an outer layer
/// can contribute keys). Work the handler spawns starts without it unless it opts in with
/// [`in_current_context`](crate::in_current_context).
///
/// # Examples
///
/// ```
/// use bemi_core::{Context, ContextLayer, current_context};
/// use tower_service::Service;
/// # use std::future::Future;
/// # use std::pin::Pin;
/// # use std::task::{Context as TaskContext, Poll};
/// # use tower_layer::Layer;
///
/// let layer = ContextLayer::new(|request: &http::Request<()>| {
///     Context::new()
///         .with("userId", request.headers().get("x-user-id").and_then(|v| v.to_str().ok()).unwrap_or("anonymous"))
///         .with("endpoint", request.uri().path())
/// });
/// # #[derive(Clone)]
/// # struct Handler;
/// # impl Service<http::Request<()>> for Handler {
/// #     type Response = Context;
/// #     type Error = std::convert::Infallible;
/// #     type Future = Pin<Box<dyn Future<Output = Result<Context, Self::Error>> + Send>>;
/// #     fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> { Poll::Ready(Ok(())) }
/// #     fn call(&mut self, _: http::Request<()>) -> Self::Future { Box::pin(async { Ok(current_context()) }) }
/// # }
/// let mut service = layer.layer(Handler);
/// let request = http::Request::builder().uri("/todo").header("x-user-id", "187234").body(()).unwrap();
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let seen = service.call(request).await.unwrap();
/// assert_eq!(seen, Context::new().with("userId", "187234").with("endpoint", "/todo"));
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct ContextLayer<F> {
    make_context: F,
}

impl<F> ContextLayer<F> {
    /// A layer computing each request's context with `make_context`.
    pub fn new(make_context: F) -> Self {
        Self { make_context }
    }
}

impl<S, F: Clone> Layer<S> for ContextLayer<F> {
    type Service = ContextService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        ContextService {
            inner,
            make_context: self.make_context.clone(),
        }
    }
}

/// The service [`ContextLayer`] wraps around another.
#[derive(Debug, Clone)]
pub struct ContextService<S, F> {
    inner: S,
    make_context: F,
}

impl<S, F, B> Service<http::Request<B>> for ContextService<S, F>
where
    S: Service<http::Request<B>>,
    F: Fn(&http::Request<B>) -> Context,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = WithContext<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let context = current_context().merged(&(self.make_context)(&request));
        // Work the inner service does while creating its future sees the context too.
        let future = {
            let _scope = enter_context_replaced(context.clone());
            self.inner.call(request)
        };
        with_context_replaced(context, future)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::time::Duration;

    use super::*;

    /// Records the context seen when called and when its future completes.
    #[derive(Clone)]
    struct Echo;

    impl Service<http::Request<u32>> for Echo {
        type Response = (Context, Context);
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<(Context, Context), Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<u32>) -> Self::Future {
            let at_call = current_context();
            let delay = u64::from(*request.body());
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                Ok((at_call, current_context()))
            })
        }
    }

    fn layer() -> ContextLayer<impl Fn(&http::Request<u32>) -> Context + Clone> {
        ContextLayer::new(|request: &http::Request<u32>| {
            Context::new().with("endpoint", request.uri().path()).with(
                "user",
                request.headers()["x-user"].to_str().unwrap_or_default(),
            )
        })
    }

    fn request(user: &str, delay: u32) -> http::Request<u32> {
        http::Request::builder()
            .uri(format!("/users/{user}"))
            .header("x-user", user)
            .body(delay)
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_each_see_their_own_context() {
        let service = layer().layer(Echo);
        let mut handles = Vec::new();
        for user in 0..50_u32 {
            let mut service = service.clone();
            handles.push(tokio::spawn(async move {
                let name = format!("u{user}");
                let (at_call, at_end) = service.call(request(&name, user % 7)).await.unwrap();
                (name, at_call, at_end)
            }));
        }
        for handle in handles {
            let (name, at_call, at_end) = handle.await.unwrap();
            let expected = Context::new()
                .with("endpoint", format!("/users/{name}"))
                .with("user", name);
            assert_eq!(at_call, expected);
            assert_eq!(at_end, expected);
        }
        assert!(current_context().is_empty());
    }

    #[tokio::test]
    async fn an_outer_context_is_merged_under_the_request() {
        let mut service = layer().layer(Echo);
        let outer = Context::new().with("service", "api").with("user", "outer");
        let (_, seen) = crate::with_context(outer, async { service.call(request("ann", 0)).await })
            .await
            .unwrap();
        assert_eq!(
            seen,
            Context::new()
                .with("service", "api")
                .with("endpoint", "/users/ann")
                .with("user", "ann")
        );
    }
}
