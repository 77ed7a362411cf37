//! Scoping of the active [`Context`]: per async task and per thread, never leaking between
//! requests.
//!
//! Two kinds of scope exist:
//!
//! - **Task scopes** ([`with_context`], [`with_context_replaced`]) wrap a future. The context is
//!   a tokio task-local: it follows the future across `.await`s and threads of a multi-threaded
//!   runtime, and is invisible to every other task, including tasks spawned from inside the scope
//!   (propagate it explicitly with [`in_current_context`]).
//! - **Thread scopes** ([`enter_context`], [`enter_context_replaced`]) last until the returned
//!   [`ContextGuard`] is dropped, for synchronous code (jobs, CLIs, sync Diesel). The guard is not
//!   `Send`, so it cannot be held across an `.await` of a spawned task by mistake.
//!
//! **Nesting.** `with_context` and `enter_context` *merge* their context over the context that is
//! active when they are called (keys of the inner scope win; the merge is shallow). The
//! `*_replaced` variants ignore the outer context. When both a task scope and a thread scope are
//! active, the one entered last is the active one (it already includes the other, having merged
//! it when it was entered).
//!
//! Leaving a scope always restores the outer context, also when the code inside panics.

use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};

use tokio::task::futures::TaskLocalFuture;

use crate::Context;

/// One entered scope: its (already merged) context and when it was entered.
#[derive(Clone, Debug)]
struct Scope {
    context: Arc<Context>,
    /// Global entry order, used to pick the innermost of a task scope and a thread scope.
    entered: u64,
    /// Identifies a thread scope so its guard removes exactly its own entry.
    id: u64,
}

static NEXT_SEQUENCE: AtomicU64 = AtomicU64::new(1);

fn next_sequence() -> u64 {
    NEXT_SEQUENCE.fetch_add(1, Ordering::Relaxed)
}

tokio::task_local! {
    static TASK_SCOPE: Scope;
}

thread_local! {
    static THREAD_SCOPES: RefCell<Vec<Scope>> = const { RefCell::new(Vec::new()) };
}

/// The innermost active scope of this task or thread, if any.
fn active_scope() -> Option<Scope> {
    let task = TASK_SCOPE.try_with(Clone::clone).ok();
    let thread = THREAD_SCOPES
        .try_with(|scopes| scopes.borrow().last().cloned())
        .ok()
        .flatten();
    match (task, thread) {
        (Some(task), Some(thread)) => Some(if task.entered > thread.entered {
            task
        } else {
            thread
        }),
        (task, thread) => task.or(thread),
    }
}

/// The context active in the current task or thread; empty when no scope is active.
///
/// # Examples
///
/// ```
/// use bemi_core::{Context, current_context, enter_context};
///
/// assert!(current_context().is_empty());
/// {
///     let _guard = enter_context(Context::new().with("job", "nightly-cleanup"));
///     assert_eq!(current_context().get("job").unwrap(), "nightly-cleanup");
/// }
/// assert!(current_context().is_empty());
/// ```
pub fn current_context() -> Context {
    active_scope()
        .map(|scope| Context::clone(&scope.context))
        .unwrap_or_default()
}

/// Runs `f` with a reference to the active context (or `None` when no scope is active), without
/// cloning it.
pub fn with_current_context<R>(f: impl FnOnce(Option<&Context>) -> R) -> R {
    match active_scope() {
        Some(scope) => f(Some(&scope.context)),
        None => f(None),
    }
}

fn new_scope(context: Context, merge_outer: bool) -> Scope {
    let context = if merge_outer {
        current_context().merged(&context)
    } else {
        context
    };
    Scope {
        context: Arc::new(context),
        entered: next_sequence(),
        id: next_sequence(),
    }
}

pin_project_lite::pin_project! {
    /// A future running inside a context scope; returned by [`with_context`] and
    /// [`with_context_replaced`].
    #[must_use = "futures do nothing unless polled"]
    pub struct WithContext<F> {
        #[pin]
        inner: TaskLocalFuture<Scope, F>,
    }
}

impl<F: Future> Future for WithContext<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

impl<F> std::fmt::Debug for WithContext<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithContext").finish_non_exhaustive()
    }
}

/// Runs `future` with `context` merged over the context active here (inner keys win).
///
/// Every write made by the future through a bemi connection wrapper carries the merged context.
/// The merge happens when `with_context` is called.
///
/// # Examples
///
/// ```
/// use bemi_core::{Context, current_context, with_context};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let request = Context::new().with("user_id", 7).with("endpoint", "/todo");
/// let seen = with_context(request, async {
///     with_context(Context::new().with("endpoint", "/todo/complete"), async {
///         current_context()
///     })
///     .await
/// })
/// .await;
/// assert_eq!(seen, Context::new().with("user_id", 7).with("endpoint", "/todo/complete"));
/// # });
/// ```
pub fn with_context<F: Future>(context: impl Into<Context>, future: F) -> WithContext<F> {
    WithContext {
        inner: TASK_SCOPE.scope(new_scope(context.into(), true), future),
    }
}

/// Runs `future` with exactly `context`, ignoring the context active here.
pub fn with_context_replaced<F: Future>(context: impl Into<Context>, future: F) -> WithContext<F> {
    WithContext {
        inner: TASK_SCOPE.scope(new_scope(context.into(), false), future),
    }
}

/// Runs `future` with the context active here; use it to carry a request's context into a
/// spawned task, which otherwise starts without one.
///
/// # Examples
///
/// ```
/// use bemi_core::{Context, current_context, in_current_context, with_context};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// with_context(Context::new().with("request_id", "r-1"), async {
///     let plain = tokio::spawn(async { current_context() });
///     let carried = tokio::spawn(in_current_context(async { current_context() }));
///     assert!(plain.await.unwrap().is_empty());
///     assert_eq!(carried.await.unwrap().get("request_id").unwrap(), "r-1");
/// })
/// .await;
/// # });
/// ```
pub fn in_current_context<F: Future>(future: F) -> WithContext<F> {
    with_context_replaced(current_context(), future)
}

/// Makes `context`, merged over the context active here, the context of this thread until the
/// returned guard is dropped.
///
/// Guards should be dropped in reverse order of creation; dropping one early removes exactly its
/// own scope and never leaves a context behind.
///
/// # Examples
///
/// ```
/// use bemi_core::{Context, current_context, enter_context};
///
/// let _job = enter_context(Context::new().with("job", "import"));
/// {
///     let _batch = enter_context(Context::new().with("batch", 3));
///     assert_eq!(current_context(), Context::new().with("job", "import").with("batch", 3));
/// }
/// assert_eq!(current_context(), Context::new().with("job", "import"));
/// ```
pub fn enter_context(context: impl Into<Context>) -> ContextGuard {
    push_thread_scope(new_scope(context.into(), true))
}

/// Makes exactly `context` the context of this thread until the returned guard is dropped.
pub fn enter_context_replaced(context: impl Into<Context>) -> ContextGuard {
    push_thread_scope(new_scope(context.into(), false))
}

fn push_thread_scope(scope: Scope) -> ContextGuard {
    let id = scope.id;
    THREAD_SCOPES.with(|scopes| scopes.borrow_mut().push(scope));
    ContextGuard {
        id,
        _not_send: PhantomData,
    }
}

/// Keeps a thread scope entered by [`enter_context`] active; dropping it leaves the scope.
#[must_use = "the context is active only while the guard is alive"]
#[derive(Debug)]
pub struct ContextGuard {
    id: u64,
    /// Thread scopes belong to one thread: the guard must not move to another.
    _not_send: PhantomData<*const ()>,
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        // `try_with`: during thread teardown the thread-local may already be gone.
        let _ = THREAD_SCOPES.try_with(|scopes| {
            let mut scopes = scopes.borrow_mut();
            if let Some(position) = scopes.iter().rposition(|scope| scope.id == self.id) {
                scopes.remove(position);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn ctx(key: &str, value: i64) -> Context {
        Context::new().with(key, value)
    }

    #[test]
    fn thread_scopes_nest_and_restore() {
        assert!(current_context().is_empty());
        let outer = enter_context(ctx("a", 1));
        {
            let _inner = enter_context(ctx("b", 2));
            assert_eq!(current_context(), ctx("a", 1).with("b", 2));
            {
                let _replaced = enter_context_replaced(ctx("c", 3));
                assert_eq!(current_context(), ctx("c", 3));
            }
            assert_eq!(current_context(), ctx("a", 1).with("b", 2));
        }
        assert_eq!(current_context(), ctx("a", 1));
        drop(outer);
        assert!(current_context().is_empty());
    }

    #[test]
    fn out_of_order_guard_drops_leave_nothing_behind() {
        let first = enter_context(ctx("a", 1));
        let second = enter_context(ctx("b", 2));
        drop(first);
        assert_eq!(current_context(), ctx("a", 1).with("b", 2));
        drop(second);
        assert!(current_context().is_empty());
    }

    #[test]
    fn panic_inside_thread_scope_restores_outer_context() {
        let _outer = enter_context(ctx("outer", 1));
        let result = catch_unwind(AssertUnwindSafe(|| {
            let _inner = enter_context(ctx("inner", 2));
            panic!("handler failed");
        }));
        assert!(result.is_err());
        assert_eq!(current_context(), ctx("outer", 1));
    }

    #[test]
    fn thread_scopes_are_per_thread() {
        let _guard = enter_context(ctx("main", 1));
        let seen = std::thread::spawn(current_context).join().unwrap();
        assert!(seen.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_tasks_never_see_each_other() {
        let mut handles = Vec::new();
        for task in 0..64_i64 {
            handles.push(tokio::spawn(with_context(ctx("task", task), async move {
                for step in 0..20 {
                    assert_eq!(
                        current_context(),
                        ctx("task", task),
                        "task {task} step {step}"
                    );
                    tokio::time::sleep(Duration::from_micros(50)).await;
                    tokio::task::yield_now().await;
                }
                current_context()
            })));
        }
        for (task, handle) in handles.into_iter().enumerate() {
            let task = i64::try_from(task).unwrap();
            assert_eq!(handle.await.unwrap(), ctx("task", task));
        }
        assert!(current_context().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn panic_inside_task_scope_does_not_leave_it_set() {
        let outcome = tokio::spawn(with_context(ctx("doomed", 1), async {
            tokio::task::yield_now().await;
            panic!("handler failed");
        }))
        .await;
        assert!(outcome.unwrap_err().is_panic());

        // Same task: the scope is left when the future unwinds.
        let caught = AssertUnwindSafe(with_context(ctx("inline", 1), async {
            panic!("handler failed");
        }));
        let result = futures_catch_unwind(caught).await;
        assert!(result.is_err());
        assert!(current_context().is_empty());
    }

    /// Polls a future, catching a panic (a tiny `FutureExt::catch_unwind`).
    async fn futures_catch_unwind<F: Future + std::panic::UnwindSafe>(
        future: F,
    ) -> std::thread::Result<F::Output> {
        let mut future = Box::pin(future);
        std::future::poll_fn(move |cx| {
            match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
                Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
                Ok(Poll::Pending) => Poll::Pending,
                Err(panic) => Poll::Ready(Err(panic)),
            }
        })
        .await
    }

    #[tokio::test]
    async fn task_scopes_merge_and_replace() {
        with_context(ctx("a", 1), async {
            with_context(ctx("b", 2), async {
                assert_eq!(current_context(), ctx("a", 1).with("b", 2));
            })
            .await;
            with_context_replaced(ctx("c", 3), async {
                assert_eq!(current_context(), ctx("c", 3));
            })
            .await;
            assert_eq!(current_context(), ctx("a", 1));
        })
        .await;
    }

    #[tokio::test]
    async fn innermost_of_task_and_thread_scope_wins() {
        // Thread scope entered inside a task scope: the thread scope is newer.
        with_context(ctx("request", 1), async {
            let _sync_block = enter_context(ctx("step", 2));
            assert_eq!(current_context(), ctx("request", 1).with("step", 2));
        })
        .await;

        // Task scope entered inside a thread scope: the task scope is newer.
        let _job = enter_context(ctx("job", 1));
        with_context(ctx("request", 2), async {
            assert_eq!(current_context(), ctx("job", 1).with("request", 2));
        })
        .await;
        assert_eq!(current_context(), ctx("job", 1));
    }

    #[test]
    fn with_current_context_borrows_without_a_scope() {
        assert!(with_current_context(|context| context.is_none()));
        let _guard = enter_context(Context::from([("k", json!("v"))]));
        assert!(with_current_context(|context| context
            .and_then(|c| c.get("k"))
            .is_some()));
    }
}
