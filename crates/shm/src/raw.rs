//! `RawValue` and `RawArray`: typed shared memory without a lock (Python's
//! `multiprocessing.sharedctypes.RawValue` / `RawArray`).
use crate::element::{Element, zero};
use crate::error::{AllocError, IndexError};
use crate::sys::{OneElem, Shared};
use mproc_core::Region;
use mproc_core::transfer::{Exporter, Importer, Transfer, TransferError};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// Elements [`RawArray::copy`] moves at a time (a bounded private buffer).
const COPY_PIECE: usize = 64 * 1024;

/// Bytes for `len` elements of `T` (at least one byte: regions are never empty).
fn bytes_for<T: Element>(len: usize) -> Result<usize, AllocError> {
    len.checked_mul(size_of::<T::Repr>())
        .filter(|&b| b <= isize::MAX as usize)
        .map(|b| b.max(1))
        .ok_or(AllocError::TooLarge { len })
}

/// Writes a type tag (so a handle is never rebuilt as another element type).
pub(crate) fn put_type<T: Element>(out: &mut Exporter<'_>) {
    out.put_bytes(std::any::type_name::<T>().as_bytes());
    out.put_u64(size_of::<T::Repr>() as u64);
}

/// Checks the tag written by [`put_type`].
pub(crate) fn check_type<T: Element>(input: &mut Importer<'_>) -> Result<(), TransferError> {
    let same_name = input.get_bytes()? == std::any::type_name::<T>().as_bytes();
    let size = input.get_u64()?;
    if !same_name || size != size_of::<T::Repr>() as u64 {
        return Err(TransferError::Malformed("element type differs"));
    }
    Ok(())
}

/// One `T` in shared memory, without a lock (Python's `RawValue`). Reads and writes are
/// single copies, so a value that fits a machine word is read or written whole; larger
/// ones can be torn by a concurrent writer (still valid: see [`Element`]). Use
/// [`Value`](crate::Value) for read-modify-write.
///
/// The memory is an anonymous memfd: it crosses into children as an fd (the type
/// implements [`Transfer`]) and is freed when the last process drops it. Nothing to
/// clean up, nothing to leak.
///
/// ```
/// let v = mproc_shm::RawValue::new(1.5f64)?;
/// v.set(v.get() * 2.0);
/// assert_eq!(v.get(), 3.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RawValue<T: Element> {
    elem: OneElem<T::Repr>,
    _t: PhantomData<T>,
}

impl<T: Element> fmt::Debug for RawValue<T>
where
    T: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RawValue").field(&self.get()).finish()
    }
}

impl<T: Element> RawValue<T> {
    /// A new shared value holding `value`.
    ///
    /// # Errors
    /// [`AllocError::Io`] if the memory cannot be created.
    pub fn new(value: T) -> Result<Self, AllocError> {
        let region = Arc::new(Region::named_memfd("mproc-value", bytes_for::<T>(1)?)?);
        let v = RawValue {
            elem: OneElem::new(region)
                .ok_or_else(|| std::io::Error::other("a fresh mapping holds no aligned element"))?,
            _t: PhantomData,
        };
        v.set(value);
        Ok(v)
    }

    /// A copy of the value.
    #[inline]
    pub fn get(&self) -> T {
        T::from_repr(self.elem.get())
    }

    /// Stores `value`.
    #[inline]
    pub fn set(&self, value: T) {
        self.elem.set(value.into_repr());
    }

    /// A new value in new shared memory holding this one's current value (Python's
    /// `multiprocessing.sharedctypes.copy`). Unlike [`clone`](Clone::clone), which gives
    /// another handle on the same memory, the two then change independently.
    ///
    /// ```
    /// let a = mproc_shm::RawValue::new(7u32)?;
    /// let b = a.copy()?;
    /// b.set(8);
    /// assert_eq!((a.get(), b.get()), (7, 8));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`AllocError::Io`] if the memory cannot be created.
    pub fn copy(&self) -> Result<Self, AllocError> {
        Self::new(self.get())
    }

    /// The memory behind the value.
    pub fn region(&self) -> &Region {
        self.elem.region()
    }
}

/// Another handle on the same value (in this process; the memory is shared, not
/// copied).
impl<T: Element> Clone for RawValue<T> {
    fn clone(&self) -> Self {
        RawValue {
            elem: OneElem::new(Arc::clone(self.elem.region())).expect("checked when made"),
            _t: PhantomData,
        }
    }
}

impl<T: Element> Transfer for RawValue<T> {
    const KIND: &'static str = "mproc_shm::RawValue";

    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        put_type::<T>(out);
        self.elem.region().export(out)
    }

    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        check_type::<T>(input)?;
        let region = Region::import(input)?;
        Ok(RawValue {
            elem: OneElem::new(Arc::new(region))
                .ok_or(TransferError::Malformed("value region too small"))?,
            _t: PhantomData,
        })
    }
}

mproc_core::impl_handle_archive!([T: Element,] RawValue<T>);

/// A fixed-length array of `T` in shared memory, without a lock (Python's `RawArray`).
/// Every access copies; see [`Array`](crate::Array) for a locked one.
///
/// ```
/// let a = mproc_shm::RawArray::from_slice(&[1i32, 2, 3])?;
/// a.set(0, 10)?;
/// assert_eq!(a.to_vec(), [10, 2, 3]);
/// assert!(a.get(3).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RawArray<T: Element> {
    region: Arc<Region>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Element + fmt::Debug> fmt::Debug for RawArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Element> RawArray<T> {
    /// `len` elements, all zero bits (Python's `RawArray('i', 10)`): `0`, `0.0`,
    /// `false`.
    ///
    /// # Errors
    /// [`AllocError::TooLarge`] if `len` elements cannot be addressed,
    /// [`AllocError::Io`] if the memory cannot be created.
    pub fn zeroed(len: usize) -> Result<Self, AllocError> {
        let region = Arc::new(Region::named_memfd("mproc-array", bytes_for::<T>(len)?)?);
        Ok(RawArray {
            region,
            len,
            _t: PhantomData,
        })
    }

    /// An array holding a copy of `items` (Python's `RawArray('i', range(10))`).
    ///
    /// # Errors
    /// As [`zeroed`](Self::zeroed).
    pub fn from_slice(items: &[T]) -> Result<Self, AllocError> {
        let a = Self::zeroed(items.len())?;
        a.write_from(0, items).expect("same length");
        Ok(a)
    }

    /// A new array in new shared memory holding a copy of this one's elements (Python's
    /// `multiprocessing.sharedctypes.copy`); unlike [`clone`](Clone::clone), the two then
    /// change independently. The elements are copied in pieces, each read whole, so a
    /// concurrent writer may leave the copy with some elements from before its write and
    /// some from after (lock a [`crate::Array`] around the copy to avoid that).
    ///
    /// ```
    /// let a = mproc_shm::RawArray::from_slice(&[1u8, 2, 3])?;
    /// let b = a.copy()?;
    /// b.set(0, 9)?;
    /// assert_eq!((a.to_vec(), b.to_vec()), (vec![1, 2, 3], vec![9, 2, 3]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`AllocError::Io`] if the memory cannot be created.
    pub fn copy(&self) -> Result<Self, AllocError> {
        let new = Self::zeroed(self.len)?;
        let mut buf = Vec::with_capacity(self.len.min(COPY_PIECE));
        let mut start = 0;
        while start < self.len {
            let n = (self.len - start).min(COPY_PIECE);
            buf.resize(n, zero::<T>());
            self.read_into(start, &mut buf).expect("in bounds");
            new.write_from(start, &buf).expect("same length");
            start += n;
        }
        Ok(new)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn shared(&self) -> Shared<'_> {
        Shared::of_region(&self.region)
    }

    fn index_error(&self, index: usize) -> IndexError {
        IndexError {
            index,
            len: self.len,
        }
    }

    fn check_range(&self, start: usize, n: usize) -> Result<(), IndexError> {
        match start.checked_add(n) {
            Some(end) if end <= self.len => Ok(()),
            Some(end) => Err(self.index_error(end)),
            None => Err(self.index_error(usize::MAX)),
        }
    }

    /// A copy of element `index`.
    ///
    /// # Errors
    /// [`IndexError`] past the end.
    #[inline]
    pub fn get(&self, index: usize) -> Result<T, IndexError> {
        if index >= self.len {
            return Err(self.index_error(index));
        }
        Ok(T::from_repr(
            self.shared().read_elem(index).expect("checked"),
        ))
    }

    /// Sets element `index`.
    ///
    /// # Errors
    /// [`IndexError`] past the end.
    #[inline]
    pub fn set(&self, index: usize, value: T) -> Result<(), IndexError> {
        if index >= self.len {
            return Err(self.index_error(index));
        }
        self.shared()
            .write_elem(index, value.into_repr())
            .expect("checked");
        Ok(())
    }

    /// Copies elements `start..start + dst.len()` into `dst`.
    ///
    /// # Errors
    /// [`IndexError`] if the range passes the end.
    pub fn read_into(&self, start: usize, dst: &mut [T]) -> Result<(), IndexError> {
        self.check_range(start, dst.len())?;
        self.shared()
            .read_elems(start, dst, T::from_repr)
            .expect("checked");
        Ok(())
    }

    /// Copies `src` into elements `start..start + src.len()`.
    ///
    /// # Errors
    /// [`IndexError`] if the range passes the end.
    pub fn write_from(&self, start: usize, src: &[T]) -> Result<(), IndexError> {
        self.check_range(start, src.len())?;
        self.shared()
            .write_elems(start, src, T::into_repr)
            .expect("checked");
        Ok(())
    }

    /// Sets every element to `value`.
    pub fn fill(&self, value: T) {
        let s = self.shared();
        let r = value.into_repr();
        for i in 0..self.len {
            s.write_elem(i, r).expect("in range");
        }
    }

    /// A copy of every element.
    pub fn to_vec(&self) -> Vec<T> {
        let mut v = vec![zero::<T>(); self.len];
        self.read_into(0, &mut v).expect("whole array");
        v
    }

    /// Iterates over copies of the elements (each read when reached).
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        let s = self.shared();
        (0..self.len).map(move |i| T::from_repr(s.read_elem(i).expect("in range")))
    }

    /// The memory behind the array.
    pub fn region(&self) -> &Region {
        &self.region
    }
}

/// Another handle on the same array (the memory is shared, not copied).
impl<T: Element> Clone for RawArray<T> {
    fn clone(&self) -> Self {
        RawArray {
            region: Arc::clone(&self.region),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Element> Transfer for RawArray<T> {
    const KIND: &'static str = "mproc_shm::RawArray";

    fn export(&self, out: &mut Exporter<'_>) -> Result<(), TransferError> {
        put_type::<T>(out);
        out.put_u64(self.len as u64);
        self.region.export(out)
    }

    fn import(input: &mut Importer<'_>) -> Result<Self, TransferError> {
        check_type::<T>(input)?;
        let len =
            usize::try_from(input.get_u64()?).map_err(|_| TransferError::Malformed("length"))?;
        let region = Region::import(input)?;
        let need = bytes_for::<T>(len).map_err(|_| TransferError::Malformed("length"))?;
        if region.len() < need {
            return Err(TransferError::Malformed("array region too small"));
        }
        Ok(RawArray {
            region: Arc::new(region),
            len,
            _t: PhantomData,
        })
    }
}

mproc_core::impl_handle_archive!([T: Element,] RawArray<T>);
