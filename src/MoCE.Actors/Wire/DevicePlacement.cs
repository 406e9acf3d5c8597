using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Actors.Wire;

/// <summary>Tensors in messages reach their receiver on the sender's device (within a process, by reference) or on the
/// CPU (read from the wire, <see cref="TensorFrame"/>). Each receiver places what it receives on its own device first.</summary>
public static class DevicePlacement
{
    /// <summary><paramref name="t"/> on <paramref name="device"/>: the same tensor when it is there already, else a copy
    /// there, and the original disposed (a receiver owns what it receives).</summary>
    public static Tensor On(this Tensor t, Device device)
    {
        if (t.device_type == device.type && (device.type == DeviceType.CPU || t.device_index == device.index)) return t;
        var moved = t.to(device);
        t.Dispose();
        return moved;
    }
}
