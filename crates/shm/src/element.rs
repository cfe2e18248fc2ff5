//! What a [`Value`](crate::Value) or [`Array`](crate::Array) can hold.
use bytemuck::Pod;

/// A type that can live in a [`Value`](crate::Value), [`Array`](crate::Array),
/// [`RawValue`](crate::RawValue) or [`RawArray`](crate::RawArray).
///
/// Shared memory can be written by any process, so what is stored there must be valid
/// for every bit pattern and hold no pointer: that is `Repr`, a [`bytemuck::Pod`] type.
/// `T` itself need not be: each read converts the stored `Repr` back with
/// [`from_repr`](Element::from_repr), which must accept every bit pattern.
///
/// - Integers, floats and `[T; N]` of elements store themselves (`Repr = Self`).
/// - `bool` stores a `u8`; any non-zero byte reads as `true`.
/// - `char` stores a `u32`; a value that is not a Unicode scalar reads as `U+FFFD`.
/// - Your own `#[repr(C)]` plain-data struct: derive `bytemuck::Pod` and `Zeroable`, then
///   [`impl_element!(MyStruct)`](crate::impl_element) (it stores itself).
///
/// ```
/// use mproc_shm::{impl_element, RawValue};
/// #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
/// #[repr(C)]
/// struct Point { x: f64, y: f64 }
/// impl_element!(Point);
/// let p = RawValue::new(Point { x: 1.0, y: 2.0 })?;
/// assert_eq!(p.get().y, 2.0);
/// let flag = RawValue::new(true)?;
/// assert!(flag.get());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Element: Copy + Send + Sync + 'static {
    /// How the value is stored in shared memory.
    type Repr: Pod;
    /// The stored form of `self`.
    fn into_repr(self) -> Self::Repr;
    /// The value a stored form stands for. Must accept every bit pattern (another
    /// process may have written anything).
    fn from_repr(repr: Self::Repr) -> Self;
}

/// Implements [`Element`] for plain-data types that store themselves
/// (`bytemuck::Pod` types: `#[repr(C)]` structs of numbers, arrays …).
#[macro_export]
macro_rules! impl_element {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::Element for $t {
            type Repr = $t;
            #[inline(always)]
            fn into_repr(self) -> $t { self }
            #[inline(always)]
            fn from_repr(repr: $t) -> $t { repr }
        }
    )*};
}

impl_element!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64
);

impl Element for bool {
    type Repr = u8;
    #[inline(always)]
    fn into_repr(self) -> u8 {
        u8::from(self)
    }
    #[inline(always)]
    fn from_repr(repr: u8) -> bool {
        repr != 0
    }
}

impl Element for char {
    type Repr = u32;
    #[inline(always)]
    fn into_repr(self) -> u32 {
        u32::from(self)
    }
    #[inline(always)]
    fn from_repr(repr: u32) -> char {
        char::from_u32(repr).unwrap_or(char::REPLACEMENT_CHARACTER)
    }
}

impl<T: Element, const N: usize> Element for [T; N] {
    type Repr = [T::Repr; N];
    #[inline(always)]
    fn into_repr(self) -> Self::Repr {
        self.map(T::into_repr)
    }
    #[inline(always)]
    fn from_repr(repr: Self::Repr) -> Self {
        repr.map(T::from_repr)
    }
}

/// The stored form of an all-zero bit pattern: what a fresh zeroed array holds.
pub(crate) fn zero<T: Element>() -> T {
    T::from_repr(<T::Repr as bytemuck::Zeroable>::zeroed())
}
