"""`vmstream eval-retrieval`: zero-shot text-video retrieval of a video-text model on the
official annotation format, with the official sampling, preprocessing and scoring."""

from __future__ import annotations

import json
import sys

from vmstream.cli.common import add_verbose
from vmstream.errors import UserError

# The official paragraph-retrieval datasets join a video's captions into one text.
_PARAGRAPH = {"didemo", "anet", "activitynet"}


def add_parser(sub) -> None:
    from vmstream.text_lengths import MAX_TEXT_LEN

    p = sub.add_parser(
        "eval-retrieval",
        help="zero-shot text-video retrieval: R@1/5/10 of a video-text model",
        description="Evaluate a video-text model (e.g. videomamba_m16_25M_f8_res224) on retrieval annotations "
        '(a JSON list of {"video": path under --videos, "caption": text or [texts]}), as the '
        "official code does: T frames at the middle of T equal intervals, bicubic resize to the "
        "model's size, ITC similarity (mean over frames of the cosine), then the top --k-test of "
        "each query re-ranked by the ITM head. Prints R@1/5/10 and means, text-to-video and "
        "video-to-text.",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="registry name of a video-text checkpoint (downloaded into the hub cache)")
    g.add_argument("--checkpoint", help="a local video-text checkpoint file")
    p.add_argument("--annotations", required=True, metavar="FILE", help="the retrieval annotation JSON")
    p.add_argument("--videos", required=True, metavar="DIR", help="where the annotations' video paths are")
    p.add_argument(
        "--dataset",
        choices=sorted(MAX_TEXT_LEN),
        help="sets the official maximum text length, and paragraph mode for didemo/anet",
    )
    p.add_argument(
        "--paragraph",
        action="store_true",
        default=None,
        help="join each video's captions into one text (DiDeMo, ActivityNet)",
    )
    p.add_argument("--max-text-len", type=int, metavar="N", help="tokens per text (default: the dataset's, else 32)")
    p.add_argument("--num-frames", type=int, metavar="T", help="frames per video (default: the model's, 8)")
    p.add_argument("--k-test", type=int, default=128, metavar="K", help="candidates re-ranked by ITM (default 128)")
    p.add_argument("--no-itm", action="store_true", help="ITC scores only (no re-ranking)")
    p.add_argument(
        "--vocab", metavar="FILE", help="bert-base-uncased vocab.txt (default $VMSTREAM_BERT_VOCAB or the hub cache)"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the model runs")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    add_verbose(p)
    p.set_defaults(handler=main)


def main(args) -> int:
    from vmstream.models import CheckpointError, CheckpointNotFound, load_model, resolve_device
    from vmstream.models.text_query import require_videotext
    from vmstream.pipeline.assembly import make_tokenizer
    from vmstream.pipeline.retrieval_eval import ClipReader, evaluate, load_annotations
    from vmstream.text_lengths import DEFAULT_MAX_TEXT_LEN, MAX_TEXT_LEN

    # --num-frames allocates a clip of that many frames per video, --k-test an ITM pass per candidate.
    for name, value, top in (
        ("--max-text-len", args.max_text_len, None),
        ("--num-frames", args.num_frames, 1024),
        ("--k-test", args.k_test, 100_000),
    ):
        if value is not None and value < 1:
            raise UserError(f"{name} {value}: must be at least 1")
        if value is not None and top is not None and value > top:
            raise UserError(f"{name} {value}: at most {top}")
    paragraph = args.paragraph if args.paragraph is not None else args.dataset in _PARAGRAPH
    max_len = args.max_text_len or MAX_TEXT_LEN.get(args.dataset or "", DEFAULT_MAX_TEXT_LEN)
    try:
        data = load_annotations(args.annotations, args.videos, paragraph=paragraph)
        model = load_model(args.checkpoint or args.model)
        require_videotext(model, "eval-retrieval")
        model = model.to(resolve_device(args.device))
    except (ValueError, CheckpointNotFound, CheckpointError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    if max_len > model.max_text_len:
        raise UserError(f"--max-text-len {max_len}: the model has {model.max_text_len} text positions")
    card = model.card
    reader = ClipReader(card.img_size, card.mean, card.std)
    try:
        res = evaluate(
            model,
            data,
            make_tokenizer(args.vocab),
            reader=reader,
            num_frames=args.num_frames or card.num_frames,
            max_text_len=max_len,
            k_test=args.k_test,
            itm=not args.no_itm,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps({"videos": len(data.videos), "texts": len(data.texts), **res}))
        return 0
    print(
        f"{len(data.videos)} videos, {len(data.texts)} texts" + (" (paragraphs)" if paragraph else ""), file=sys.stderr
    )
    print(f"{'':10s} {'R@1':>7s} {'R@5':>7s} {'R@10':>7s} {'mean':>7s}")
    for kind, r in res.items():
        for way in ("t2v", "v2t"):
            print(
                f"{kind.upper() + ' ' + way:10s} "
                + " ".join(f"{r[f'{way}_r{k}']:7.2f}" for k in (1, 5, 10))
                + f" {r[f'{way}_r_mean']:7.2f}"
            )
    return 0
