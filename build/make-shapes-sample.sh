#!/usr/bin/env bash
# Makes data/shapes-sample: a small RGB image dataset drawn here with ImageMagick (so it is ours to license, MIT as the
# repository), in the layouts `moce.datasets.NAME.format` reads: `folder` (data/shapes-sample/{train,val}/CLASS/KEY.{jpg,png})
# and `tar` (WebDataset shards, data/shapes-shards/{train,val}/shapes-NNN.tar, made from the folder by `moce shard --from data/shapes-sample --out data/shapes-shards --name shapes --per-shard 128`).
# Six classes, random colours, sizes 40–80 px (not all square), JPEG and PNG, and on purpose a few images that need
# converting: 16-bit PNGs, grey PNGs, RGBA PNGs and CMYK JPEGs. Deterministic for a given ImageMagick (-seed per image).
# Usage: bash build/make-shapes-sample.sh [OUT]   (needs: apt-get install -y imagemagick)
set -euo pipefail
out=${1:-"$(cd "$(dirname "$0")/.." && pwd)/data/shapes-sample"}
command -v magick >/dev/null || command -v identify >/dev/null || { echo "needs ImageMagick: apt-get install -y imagemagick" >&2; exit 1; }
rm -rf "$out"; mkdir -p "$out"
classes=(plasma gradient radial checker stripes disc)
rnd() { echo $(( (RANDOM % ($2 - $1 + 1)) + $1 )); }
colour() { printf '#%02x%02x%02x' "$(rnd 0 255)" "$(rnd 0 255)" "$(rnd 0 255)"; }
draw() {   # draw CLASS W H SEED FILE
  local c=$1 w=$2 h=$3 s=$4 f=$5 a b
  a=$(colour); b=$(colour)
  case $c in
    plasma)   convert -seed "$s" -size "${w}x${h}" "plasma:${a}-${b}" "$f.tmp.png" ;;
    gradient) convert -size "${w}x${h}" -define gradient:angle="$(rnd 0 359)" "gradient:${a}-${b}" "$f.tmp.png" ;;
    radial)   convert -size "${w}x${h}" "radial-gradient:${a}-${b}" "$f.tmp.png" ;;
    checker)  convert -size "${w}x${h}" pattern:checkerboard -scale "$(rnd 100 300)%" -crop "${w}x${h}+0+0" +repage -fill "$a" -tint 100 "$f.tmp.png" ;;
    stripes)  convert -size "${w}x${h}" "xc:$a" -fill "$b" -draw "$(for i in $(seq 0 8 $((w+h))); do printf 'rectangle %d,0 %d,%d ' "$i" "$((i+3))" "$h"; done)" -rotate "$(rnd 0 179)" -gravity center -crop "${w}x${h}+0+0" +repage "$f.tmp.png" ;;
    disc)     local r; r=$(rnd 8 $(( (w<h?w:h)/2 - 2 ))); convert -size "${w}x${h}" "xc:$a" -fill "$b" -draw "circle $((w/2)),$((h/2)) $((w/2)),$((h/2-r))" "$f.tmp.png" ;;
  esac
  convert "$f.tmp.png" -seed "$s" -attenuate 0.3 +noise Gaussian "$f.tmp2.png"; rm "$f.tmp.png"
  case $((s % 23)) in                              # the few that need converting, then JPEG or PNG by turn
    3)  convert "$f.tmp2.png" -depth 16 "$f.png" ;;
    7)  convert "$f.tmp2.png" -colorspace Gray "$f.png" ;;
    11) convert "$f.tmp2.png" -alpha set -channel A -evaluate set 60% +channel "$f.png" ;;
    19) convert "$f.tmp2.png" -colorspace CMYK -quality 90 "$f.jpg" ;;
    *)  if (( s % 4 == 1 )); then convert "$f.tmp2.png" -depth 8 "$f.png"; else convert "$f.tmp2.png" -quality 85 "$f.jpg"; fi ;;
  esac
  rm "$f.tmp2.png"
}
RANDOM=20261202; seed=0
for split in train val; do
  n=$([[ $split == train ]] && echo 40 || echo 10)
  for c in "${classes[@]}"; do
    mkdir -p "$out/$split/$c"
    for i in $(seq -f '%03g' 1 "$n"); do
      seed=$((seed + 1))
      if (( seed % 3 )); then w=64; h=64; else w=$(rnd 40 80); h=$(rnd 40 80); fi
      draw "$c" "$w" "$h" "$seed" "$out/$split/$c/$c-$i"
    done
  done
done
cat > "$out/README.md" <<'MD'
# shapes-sample

A small RGB image dataset for tests and the `shapes` preset, drawn with ImageMagick by `build/make-shapes-sample.sh`
(licensed as this repository). Six classes (plasma, gradient, radial, checker, stripes, disc), 40 training and 10
validation images each, random colours, 40–80 px (a third not 64×64 and not all square), JPEG and PNG. On purpose,
some images need converting: 16-bit PNGs, grey PNGs, PNGs with alpha and CMYK JPEGs.

Layout (`format = folder`): `train/CLASS/*.{jpg,png}` and `val/CLASS/*.{jpg,png}`. The same images as WebDataset tar
shards (`format = tar`) are in `../shapes-shards`, made by `moce shard`.
MD
du -sh "$out"
