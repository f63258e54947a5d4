"""``mmgen push MODEL_DIR owner/name``: upload a saved model (a run's ``best/`` or ``final/``) to the Hugging Face Hub.

Uploads the files a model is made of (:data:`mmgen.hub.MODEL_FILES`: configs, weights, tokenizer, model card) in one
commit, creating the repo (and the branch ``--revision``) when missing. A folder without a model card gets one
first. ``Captioner.from_pretrained("owner/name")`` loads it back on any machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmgen.commands import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="upload a saved model to the Hugging Face Hub",
        description="Upload a saved model folder (RUN/best, RUN/final, save_pretrained) to a Hub model repo in one "
        "commit: configs, weights, tokenizer and the model card. The token comes from `hf auth login`, HF_TOKEN or "
        "--token.",
    )
    p.add_argument("model", type=Path, metavar="MODEL_DIR", help="the saved model folder")
    p.add_argument("repo_id", metavar="OWNER/NAME", help="the Hub model repo (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", default=None, help="the branch to commit to (created when missing; default main)")
    p.add_argument("--commit-message", default=None, help='the commit message (default: "Upload mmgen model")')
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--token", default=None, help="a Hub token (default: the saved login or HF_TOKEN)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmgen.hub import looks_like_repo_id, push_folder
    from mmgen.model_card import read_card

    if not (args.model / "config.json").is_file():
        raise UsageError(f"{args.model}: not a saved model folder (no config.json)")
    if "/" not in args.repo_id or not looks_like_repo_id(args.repo_id):
        raise UsageError(f"{args.repo_id}: a Hub repo id looks like owner/name")
    if read_card(args.model) is None:  # a folder saved before cards existed: describe what is there
        from mmgen.models import CaptionModel

        CaptionModel.from_pretrained(args.model).save_pretrained(args.model)
        print(f"mmgen push: wrote a model card, {args.model / 'README.md'}", file=sys.stderr)
    url = push_folder(
        args.model,
        args.repo_id,
        private=True if args.private else None,
        revision=args.revision,
        commit_message=args.commit_message,
        token=args.token,
        create_pr=args.create_pr,
    )
    print(url)
    return 0
