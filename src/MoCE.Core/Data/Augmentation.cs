using MoCE.Core.Training;

namespace MoCE.Core.Data;

/// <summary>One image's crop, and whether it is mirrored.</summary>
public readonly record struct Crop(int X, int Y, int Width, int Height, bool Flip);

/// <summary>MAE's training augmentation: RandomResizedCrop (scale 0.2–1, aspect 3/4–4/3, bicubic) and a horizontal flip
/// with probability ½, as torchvision draws them. Each draw is a pure function of (seed, step, image index), so a
/// replayed or resumed step sees the same pixels on any thread and in any engine.</summary>
public sealed record Augmentation(double ScaleMin = 0.2, double ScaleMax = 1.0, bool Flip = true)
{
    private static readonly double LogRatioMin = Math.Log(3.0 / 4.0), LogRatioMax = Math.Log(4.0 / 3.0);

    public Augmentation Validate() =>
        ScaleMin > 0 && ScaleMin <= ScaleMax && ScaleMax <= 1 ? this
            : throw new Config.ConfigException("moce.data.augment.scale", $"needs 0 < min ≤ max ≤ 1, got [{ScaleMin}, {ScaleMax}]");

    /// <summary>The crop of image <paramref name="index"/> (of <paramref name="width"/>×<paramref name="height"/>) at step
    /// <paramref name="step"/>: torchvision's RandomResizedCrop.get_params (ten tries, then a central crop of clamped aspect).</summary>
    public Crop Draw(long seed, long step, int index, int width, int height)
    {
        var rng = new SplitMix64(Seeds.Derive((long)Seeds.Derive(seed, Seeds.Stream.Augment, step), Seeds.Stream.Augment, index));
        double U() => (rng.Next() >> 11) * (1.0 / (1UL << 53));
        bool flip = Flip && U() < 0.5;
        double area = (double)width * height;
        for (int attempt = 0; attempt < 10; attempt++)
        {
            double target = area * (ScaleMin + (ScaleMax - ScaleMin) * U());
            double ratio = Math.Exp(LogRatioMin + (LogRatioMax - LogRatioMin) * U());
            int w = (int)Math.Round(Math.Sqrt(target * ratio)), h = (int)Math.Round(Math.Sqrt(target / ratio));
            if (w > 0 && h > 0 && w <= width && h <= height)
                return new Crop((int)rng.NextBelow((ulong)(width - w + 1)), (int)rng.NextBelow((ulong)(height - h + 1)), w, h, flip);
        }
        double inRatio = (double)width / height;
        int cw = width, ch = height;
        if (inRatio < 3.0 / 4.0) ch = (int)Math.Round(cw / (3.0 / 4.0));
        else if (inRatio > 4.0 / 3.0) cw = (int)Math.Round(ch * (4.0 / 3.0));
        return new Crop((width - cw) / 2, (height - ch) / 2, cw, ch, flip);
    }

    /// <summary>What evaluation (and training without augmentation) sees: the central square, resized to the model's size.
    /// A square image of that size is used as it is.</summary>
    public static Crop Center(int width, int height)
    {
        int s = Math.Min(width, height);
        return new Crop((width - s) / 2, (height - s) / 2, s, s, false);
    }
}
