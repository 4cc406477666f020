//! The kernel layer: the only one that uses aya. It owns the data plane
//! (programs loaded once per host, host-wide maps), the bpffs layout, the
//! endpoint table, policies in maps, attach/detach/upgrade of interfaces and
//! the connection tables. It may import `model`, `compile` and `sys`.

pub mod conntrack;
pub mod dataplane;
pub mod loader;
pub mod offsets;
pub mod pins;
pub mod policy_maps;

/// Any error of a lower layer kept as the source of a kernel error (aya's
/// map, program and link errors differ by call; the chain prints the cause).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Any error of the kernel layer, for the layers above that report them
/// as they are (each prints its own cause chain).
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    #[error(transparent)]
    DataPlane(#[from] dataplane::DataPlaneError),
    #[error(transparent)]
    Policy(#[from] policy_maps::PolicyMapError),
    #[error(transparent)]
    Conntrack(#[from] conntrack::ConntrackError),
}

/// `From` every kernel-layer error for an error type with a
/// `Kernel(KernelError)` variant, so `?` works on each of them.
#[macro_export]
macro_rules! from_kernel_errors {
    ($error:ty) => {
        $crate::from_kernel_errors!(@each $error:
            loader::LoaderError,
            dataplane::DataPlaneError,
            policy_maps::PolicyMapError,
            conntrack::ConntrackError);
    };
    (@each $error:ty: $($module:ident :: $kind:ident),*) => {
        $(
            impl From<$crate::kernel::$module::$kind> for $error {
                fn from(e: $crate::kernel::$module::$kind) -> Self {
                    Self::Kernel(e.into())
                }
            }
        )*
    };
}
