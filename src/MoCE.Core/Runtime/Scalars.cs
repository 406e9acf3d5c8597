using TorchSharp;

namespace MoCE.Core.Runtime;

/// <summary>Scalars that live as long as the process. TorchSharp turns a number argument (index_add_'s alpha = 1.0, say)
/// into a temporary <see cref="Scalar"/> whose native object only its finalizer frees; nothing keeps the managed object
/// alive during the native call it is passed to, so a collection at that moment can free the scalar while libtorch reads
/// it. That was seen: "false INTERNAL ASSERT FAILED at c10/core/Scalar.h:279" from index_add_ in the router. A static
/// scalar is always reachable, and libtorch only reads it, so threads share it safely.</summary>
public static class Scalars
{
    public static readonly Scalar One = 1.0.ToScalar();
}
