//! `starmap` for any arity: [`StarFn`] is implemented for every function of 1 to 12
//! arguments, so `pool.starmap(f, items)` takes `fn(A) -> R` over `(A,)`,
//! `fn(A, B) -> R` over `(A, B)` … up to twelve.
//!
//! # Safety
//!
//! A starmap function travels to a worker as the address of [`shim`], a plain
//! `fn(Args) -> R` monomorphised for the function's own type `F`. A `fn` item and a
//! closure that captures nothing are zero-sized and hold no state: the shim recreates
//! one from no bytes in the worker (the same binary, so the same type) and calls it.
//! The shim refuses at compile time any `F` that is not zero-sized (a `fn` pointer, a
//! closure with captures of non-zero size); [`StarFn`] cannot be implemented outside
//! this crate, so `F` is always a function or closure type. Closures are refused before
//! the value is made (by their type name, `{{closure}}`): one that captures only
//! zero-sized values would have them recreated from no bytes, and a zero-sized token
//! type's own guarantees would not hold. What is left is a `fn` item, which has no state.

/// A function whose arguments come as one tuple `Args`: what [`Pool::starmap`]
/// (Python's `starmap`) takes.
///
/// Implemented for every `fn` item of 1 to 12 arguments: `fn(A, B) -> R` is a
/// `StarFn<(A, B)>`. Pass the function itself: a `fn` *pointer* or a closure with
/// captures is refused at compile time (its value, not only its type, would have to
/// travel), and a closure without captures fails each item with
/// [`TaskError::Panicked`](crate::TaskError::Panicked) ("starmap takes a `fn` item"),
/// since the worker recreates the function from its type alone. The trait is sealed.
///
/// ```no_run
/// use mproc_pool::Pool;
/// fn volume(l: u32, w: u32, h: u32) -> u32 {
///     l * w * h
/// }
/// let pool = Pool::new(2).unwrap();
/// assert_eq!(pool.starmap(volume, vec![(1, 2, 3), (2, 2, 2)]).unwrap(), vec![6, 8]);
/// ```
///
/// [`Pool::starmap`]: crate::Pool::starmap
pub trait StarFn<Args>: Copy + Send + Sync + 'static {
    /// What the function returns.
    type Output;
    /// Calls the function on the tuple's elements.
    #[doc(hidden)]
    fn call_star(self, args: Args, _: private::Token) -> Self::Output;
}

mod private {
    /// Only this crate can name it, so only this crate implements `StarFn`.
    #[derive(Debug)]
    pub struct Token;
}

macro_rules! star_fn {
    ($($a:ident),+) => {
        impl<F, R, $($a,)+> StarFn<($($a,)+)> for F
        where
            F: Fn($($a),+) -> R + Copy + Send + Sync + 'static,
        {
            type Output = R;
            #[allow(non_snake_case)]
            fn call_star(self, ($($a,)+): ($($a,)+), _: private::Token) -> R {
                self($($a),+)
            }
        }
    };
}

star_fn!(A1);
star_fn!(A1, A2);
star_fn!(A1, A2, A3);
star_fn!(A1, A2, A3, A4);
star_fn!(A1, A2, A3, A4, A5);
star_fn!(A1, A2, A3, A4, A5, A6);
star_fn!(A1, A2, A3, A4, A5, A6, A7);
star_fn!(A1, A2, A3, A4, A5, A6, A7, A8);
star_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9);
star_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10);
star_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11);
star_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12);

/// `F` called on a tuple, as a plain `fn(Args) -> R` that can travel to a worker like any
/// other task function.
pub(crate) fn shim<F: StarFn<Args>, Args>(args: Args) -> F::Output {
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "starmap takes a fn item, not a fn pointer or a closure"
        )
    };
    assert!(
        !std::any::type_name::<F>().contains("{{closure}}"),
        "starmap takes a `fn` item, not a closure: {}",
        std::any::type_name::<F>()
    );
    // SAFETY: `F` is zero-sized (checked at compile time above) and, the trait being
    // sealed, a `fn` item or a closure type (`Fn` cannot be implemented by other types
    // on stable Rust), not a closure (checked above): a `fn` item holds no bytes and no
    // state, so one made from nothing is the function itself. The caller
    // (`Pool::starmap*`) held a value of `F`, so `F` is inhabited.
    let f: F = unsafe { std::mem::zeroed() };
    f.call_star(args, private::Token)
}

/// The task function for a starmap of `f`.
pub(crate) fn as_task<F: StarFn<Args>, Args>(_f: F) -> fn(Args) -> F::Output {
    shim::<F, Args>
}
