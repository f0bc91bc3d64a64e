"""Score a folder of VBench videos with VBench 0.1.5, in VBench's own environment (eval/vbench/setup_env.sh).

    bash eval/vbench/calc.sh VIDEO_DIR [SCORE_DIR]          # = <venv>/bin/python eval/vbench/calc_vbench.py ...

This file imports nothing from the project (the VBench environment pins numpy < 2 and transformers 4.33.2, which
the project's cannot share). It scores the 16 dimensions the reference scores, with the reference's settings
(DuCa-Open-Sora/eval/vbench/calc_vbench.py): ``VBench(cuda, VBench_full_info.json, SCORE_DIR)``, then for each
dimension ``evaluate(name=dim, dimension_list=[dim], mode="vbench_standard", local=False, read_frame=False,
imaging_quality_preprocessing_mode="longer")``, one result file per dimension. Before any video is read:

1. detectron2 must be importable when a GRiT dimension (object_class, multiple_objects, color,
   spatial_relationship) is chosen; every model file VBench 0.1.5 will load for the chosen dimensions is
   looked up where VBench expects it; with
   ``--offline`` (or HF_HUB_OFFLINE=1 / VBENCH_OFFLINE=1) a missing one stops the run with its name, the
   dimensions that need it, the path and the download address; online, VBench downloads it itself;
2. every expected video ``{prompt}-{k}.mp4`` (k = 0..4) of the chosen dimensions must exist (VBench would only
   warn and score fewer videos); ``--allow-missing`` scores anyway;
3. VBench reads a view of the folder holding only those videos (``SCORE_DIR/videos``, symbolic links):
   VBench 0.1.5 takes the video suffix from the first directory entry, so ``run.json`` or a log beside the
   videos would make it find none.

A rerun skips the dimensions whose result file exists (VBench writes it when the dimension is done).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL_INFO = HERE / "VBench_full_info.json"
VIDEOS_PER_PROMPT = 5                        # VBench's vbench_standard mode looks up {prompt}-0 .. -4
# The reference's dimension order (its comments give ~minutes per dimension on one GPU).
DIMENSIONS = ("subject_consistency", "imaging_quality", "background_consistency", "motion_smoothness",
              "overall_consistency", "human_action", "multiple_objects", "spatial_relationship", "object_class",
              "color", "aesthetic_quality", "appearance_style", "temporal_flickering", "scene", "temporal_style",
              "dynamic_degree")
EXIT_USAGE = 2


def cache_roots() -> dict[str, Path]:
    """Where VBench 0.1.5 and the libraries it calls keep their models (vbench/utils.py CACHE_DIR, torch.hub,
    openai-clip's download_root, the Hugging Face hub cache)."""
    home = Path.home()
    hf_home = Path(os.environ.get("HF_HOME", home / ".cache" / "huggingface"))
    return {
        "vbench": Path(os.environ.get("VBENCH_CACHE_DIR", home / ".cache" / "vbench")),
        "torch": Path(os.environ.get("TORCH_HOME", home / ".cache" / "torch")),
        "clip": home / ".cache" / "clip",
        "hf": Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub")),
    }


# (file, root, path under the root, dimensions, download address), from vbench 0.1.5's utils.init_submodules
# (local=False, as the reference), aesthetic_quality.py, the ViCLIP tokenizer and the tag2text model.
_CLIP_B = "https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"
_CLIP_L = "https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"
_HF_VBENCH = "https://huggingface.co/OpenGVLab/VBench_Used_Models/resolve/main/"
MODEL_FILES = (
    ("dino_vitbase16_pretrain.pth", "torch", "hub/checkpoints/dino_vitbase16_pretrain.pth", ("subject_consistency",),
     "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
    ("DINO hub code (hubconf.py)", "torch", "hub/facebookresearch_dino_main/hubconf.py", ("subject_consistency",),
     "git clone https://github.com/facebookresearch/dino <torch>/hub/facebookresearch_dino_main"),
    ("ViT-B-32.pt", "clip", "ViT-B-32.pt", ("background_consistency", "appearance_style"), _CLIP_B),
    ("ViT-L-14.pt", "clip", "ViT-L-14.pt", ("aesthetic_quality",), _CLIP_L),
    ("sa_0_4_vit_l_14_linear.pth", "vbench", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
     ("aesthetic_quality",), "https://github.com/LAION-AI/aesthetic-predictor/blob/main/sa_0_4_vit_l_14_linear.pth?raw=true"),
    ("musiq_spaq_ckpt-358bb6af.pth", "vbench", "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth", ("imaging_quality",),
     "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/musiq_spaq_ckpt-358bb6af.pth"),
    ("grit_b_densecap_objectdet.pth", "vbench", "grit_model/grit_b_densecap_objectdet.pth",
     ("object_class", "multiple_objects", "color", "spatial_relationship"),
     "https://datarelease.blob.core.windows.net/grit/models/grit_b_densecap_objectdet.pth"),
    ("tag2text_swin_14m.pth", "vbench", "caption_model/tag2text_swin_14m.pth", ("scene",),
     "https://huggingface.co/spaces/xinyu1205/recognize-anything/resolve/main/tag2text_swin_14m.pth"),
    ("bert-base-uncased (tokenizer + config)", "hf", "models--bert-base-uncased", ("scene",),
     "huggingface-cli download bert-base-uncased"),
    ("ViClip-InternVid-10M-FLT.pth", "vbench", "ViCLIP/ViClip-InternVid-10M-FLT.pth",
     ("temporal_style", "overall_consistency"), _HF_VBENCH + "ViClip-InternVid-10M-FLT.pth"),
    ("bpe_simple_vocab_16e6.txt.gz", "vbench", "ViCLIP/bpe_simple_vocab_16e6.txt.gz",
     ("temporal_style", "overall_consistency"),
     "https://raw.githubusercontent.com/openai/CLIP/main/clip/bpe_simple_vocab_16e6.txt.gz"),
    ("l16_ptk710_ftk710_ftk400_f16_res224.pth", "vbench", "umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth",
     ("human_action",), _HF_VBENCH + "l16_ptk710_ftk710_ftk400_f16_res224.pth"),
    ("amt-s.pth", "vbench", "amt_model/amt-s.pth", ("motion_smoothness",),
     "https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth"),
    ("raft-things.pth", "vbench", "raft_model/models/raft-things.pth", ("dynamic_degree",),
     "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip (unzip into <vbench>/raft_model/)"),
)


class Stop(Exception):
    """A problem the user can fix: printed as one line, exit status 2."""


def missing_models(dimensions: list[str]) -> list[str]:
    """One line per model file the chosen dimensions need and that is not where VBench looks for it."""
    roots, lines = cache_roots(), []
    for name, root, rel, dims, url in MODEL_FILES:
        needed = [d for d in dims if d in dimensions]
        path = roots[root] / rel
        if needed and not path.exists():
            lines.append(f"{name} (for {', '.join(needed)}) expected at {path}; get it from {url}")
    return lines


# VBench 0.1.5 scores these four with GRiT, which imports detectron2 (built from GitHub by setup_env.sh).
GRIT_DIMENSIONS = ("multiple_objects", "spatial_relationship", "object_class", "color")
DETECTRON2_FIX = ("pip install --no-build-isolation 'detectron2 @ git+https://github.com/facebookresearch/detectron2.git"
                  "@ff53992' in the VBench environment (needs github.com), or score the others with --start/--end")


def missing_libraries(dimensions: list[str]) -> list[str]:
    """One line per library the chosen dimensions import and the VBench environment lacks."""
    import importlib.util

    grit = [d for d in dimensions if d in GRIT_DIMENSIONS]
    if grit and importlib.util.find_spec("detectron2") is None:
        return [f"detectron2 (for {', '.join(grit)}) is not installed; {DETECTRON2_FIX}"]
    return []


def expected_videos(full_info: list[dict], dimensions: list[str]) -> list[str]:
    names: list[str] = []
    for entry in full_info:
        if set(entry["dimension"]) & set(dimensions):
            names += [f"{entry['prompt_en']}-{k}.mp4" for k in range(VIDEOS_PER_PROMPT)]
    return list(dict.fromkeys(names))


def make_view(video_dir: Path, names: list[str], view: Path) -> int:
    """``view`` holds one symbolic link per existing expected video, and nothing else."""
    view.mkdir(parents=True, exist_ok=True)
    for old in view.iterdir():
        old.unlink()
    linked = 0
    for name in names:
        if (video_dir / name).is_file():
            (view / name).symlink_to((video_dir / name).resolve())
            linked += 1
    return linked


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video_dir", help="the folder the launcher filled ({prompt}-{k}.mp4)")
    p.add_argument("score_dir", nargs="?", help="where VBench writes its results (default VIDEO_DIR + '_scores')")
    p.add_argument("--full-info", default=str(FULL_INFO), help="VBench_full_info.json (default: the shipped copy)")
    p.add_argument("--start", type=int, default=0, help="first dimension index (the reference's --start)")
    p.add_argument("--end", type=int, default=len(DIMENSIONS), help="one past the last dimension index")
    p.add_argument("--offline", action="store_true",
                   default=os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("VBENCH_OFFLINE") == "1",
                   help="no downloads: a missing model file stops the run (also HF_HUB_OFFLINE=1 / VBENCH_OFFLINE=1)")
    p.add_argument("--allow-missing", action="store_true", help="score even if some expected videos are missing")
    p.add_argument("--device", default="cuda", help="torch device (the reference: cuda; GRiT needs it)")
    p.add_argument("--check-only", action="store_true", help="run the checks and build the view, then exit")
    return p.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not 0 <= args.start < args.end <= len(DIMENSIONS):
        raise Stop(f"--start {args.start} / --end {args.end} are invalid: pass 0 <= start < end <= {len(DIMENSIONS)}")
    dimensions = list(DIMENSIONS[args.start:args.end])
    video_dir = Path(args.video_dir)
    score_dir = Path(args.score_dir) if args.score_dir else video_dir.with_name(video_dir.name + "_scores")
    try:
        full_info = json.loads(Path(args.full_info).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise Stop(f"--full-info {args.full_info} cannot be read as VBench's prompt list ({err})") from None

    libraries = missing_libraries(dimensions)               # 1. libraries and models, before any video
    if libraries:
        raise Stop(" | ".join(libraries))
    missing = missing_models(dimensions)
    if missing and args.offline:
        raise Stop(f"{len(missing)} VBench model file(s) missing and downloads are off: " + " | ".join(missing))
    for line in missing:
        print(f"note: VBench will download {line}", flush=True)

    if not video_dir.is_dir():                               # 2. the videos, by name
        raise Stop(f"video folder {video_dir} does not exist; sample it with eval/vbench/launch.sh first")
    names = expected_videos(full_info, dimensions)
    absent = [n for n in names if not (video_dir / n).is_file()]
    if absent and not args.allow_missing:
        raise Stop(f"{len(absent)} of {len(names)} videos are missing in {video_dir} (first: {absent[0]!r}); finish "
                   f"sampling (rerun the launcher) or pass --allow-missing")
    view = score_dir / "videos"                              # 3. a folder of videos only
    linked = make_view(video_dir, names, view)
    todo = [d for d in dimensions if not (score_dir / f"{d}_eval_results.json").is_file()]
    print(f"{linked} videos, {len(todo)} of {len(dimensions)} dimensions to score into {score_dir}", flush=True)
    if args.check_only or not todo:
        return 0

    import torch  # the VBench environment's
    from vbench import VBench

    bench = VBench(torch.device(args.device), str(Path(args.full_info).resolve()), str(score_dir))
    for i, dim in enumerate(todo, 1):              # hours in all: one progress line per dimension, on stderr
        print(f"[{i}/{len(todo)}] scoring {dim}", file=sys.stderr, flush=True)
        bench.evaluate(videos_path=str(view), name=dim, local=False, read_frame=False, dimension_list=[dim],
                       mode="vbench_standard", imaging_quality_preprocessing_mode="longer")
    print(f"done; tabulate in the project's environment: python -m opensora_duca.vbench_table --run NAME={score_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except Stop as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
