using System.Collections.Concurrent;
using TorchSharp;

namespace MoCE.Core.Runtime;

/// <summary>Scalars that live as long as the process. TorchSharp turns a number argument (index_add_'s alpha = 1.0,
/// clamp_min's bound, a tensor times a double) into a temporary <see cref="Scalar"/> whose native object only its
/// finalizer frees; nothing keeps the managed object alive during the native call it is passed to, so a collection at
/// that moment can free the scalar while libtorch reads it. That was seen: "false INTERNAL ASSERT FAILED at
/// c10/core/Scalar.h:279" from index_add_ in the router. A scalar from here is always reachable, and libtorch only reads
/// it, so threads share it safely. For the constants of the per-step code; a number that changes every step (a
/// learning rate) is a scalar the step holds with <c>using</c> instead.</summary>
public static class Scalars
{
    private static readonly ConcurrentDictionary<double, Scalar> Doubles = new();
    private static readonly ConcurrentDictionary<int, Scalar> Integers = new();

    public static readonly Scalar One = Of(1.0);
    public static readonly Scalar Two = Of(2);

    /// <summary>The double scalar of this value (as the implicit conversion of a double makes it).</summary>
    public static Scalar Of(double value) => Doubles.GetOrAdd(value, v => v.ToScalar());

    /// <summary>The integer scalar of this value (as the implicit conversion of an int makes it).</summary>
    public static Scalar Of(int value) => Integers.GetOrAdd(value, v => v.ToScalar());
}

/// <summary>Tensor sums as TorchSharp's <c>+</c> computes them (<c>add</c> with alpha = 1), but with an alpha that stays
/// alive: the operator passes a temporary integer <see cref="Scalar"/>, which a collection during the call can free
/// while libtorch reads it (<c>−</c> passes none). Seen: "Expected false to be true ... toFloat at
/// c10/core/Scalar.h:140" from <c>Tensor.op_Addition</c> in the teacher's patch embedding. For the per-step code.</summary>
public static class TensorSums
{
    private static readonly Scalar Alpha = Scalars.Of(1);                      // the operators' own alpha: an int 1

    /// <summary>a + b.</summary>
    public static torch.Tensor Plus(this torch.Tensor a, torch.Tensor b) => a.add(b, Alpha);
}

