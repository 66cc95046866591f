"""Write the review report and post it as one pull-request comment, updated in place on each push.

Called by ``.github/workflows/review.yml`` after ``make run``, from the project root::

    python -m pipeline.review.pr_comment --base "$BASE_SHA" --rebuild-base --output reports/review.md --html reports/review.html

It writes the report (what ``python -m pipeline report --base REV`` writes),
then looks for the comment of the workflow's bot that carries the hidden marker
``<!-- cnn-pipeline-review -->`` on the pull request: PATCHes it when found,
else POSTs a new one (GitHub REST API; ``GITHUB_TOKEN``, ``GITHUB_REPOSITORY``,
the pull request number from ``--pr`` or ``GITHUB_EVENT_PATH``). The body also
goes to ``GITHUB_STEP_SUMMARY`` when that is set.

  --dry-run         print the comment body and call nothing (what the tests run)
  --body FILE       post an existing Markdown report instead of writing one
  --rebuild-base    reproduce the base's outputs where the DVC cache lacks them
                    (:func:`pipeline.review.sides.build_base`)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.review import MARKER, render_html, render_md, review

MAX_BODY = 65_000  # GitHub refuses comments over 65,536 characters
BOT = "github-actions[bot]"  # who GITHUB_TOKEN posts as

Api = Callable[[str, str, dict | None], Any]  # (method, path, JSON body) -> decoded JSON


def fit(body: str, limit: int = MAX_BODY) -> str:
    """The body with the marker first, cut after the last whole ``<details>`` section when over ``limit``."""
    if MARKER not in body:
        body = f"{MARKER}\n{body}"
    if len(body) <= limit:
        return body
    note = "\n_The report is longer than a comment allows: the rest is in the workflow run's `review` artifact._\n"
    cut = body.rfind("</details>\n", 0, limit - len(note))
    head = body[: cut + len("</details>\n")] if cut > 0 else body[: limit - len(note)]
    return head + note


def find_comment(comments: Iterable[dict], bot: str = BOT) -> dict | None:
    """The bot's comment that carries the marker (another user's comment quoting it is not ours)."""
    for comment in comments:
        if MARKER in (comment.get("body") or "") and (comment.get("user") or {}).get("login") == bot:
            return comment
    return None


def list_comments(api: Api, repo: str, pr: int) -> Iterable[dict]:
    """Every comment of the pull request, a page of 100 at a time."""
    page = 1
    while True:
        batch = api("GET", f"/repos/{repo}/issues/{pr}/comments?per_page=100&page={page}", None)
        yield from batch
        if len(batch) < 100:
            return
        page += 1


def upsert(api: Api, repo: str, pr: int, body: str, bot: str = BOT) -> tuple[str, str]:
    """PATCH the bot's marked comment, else POST one; returns ("updated" | "created", its URL)."""
    existing = find_comment(list_comments(api, repo, pr), bot)
    if existing is not None:
        result = api("PATCH", f"/repos/{repo}/issues/comments/{existing['id']}", {"body": body})
        return "updated", result.get("html_url", "")
    result = api("POST", f"/repos/{repo}/issues/{pr}/comments", {"body": body})
    return "created", result.get("html_url", "")


def github_api(token: str, base_url: str = "https://api.github.com") -> Api:
    """An :data:`Api` calling GitHub's REST API with ``token``."""

    def call(method: str, path: str, body: dict | None) -> Any:
        request = urllib.request.Request(
            base_url.rstrip("/") + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "Content-Type": "application/json",
                "User-Agent": "cnn-pipeline-review",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310  (https API URL)
            return json.loads(response.read() or b"null")

    return call


def pull_request_number(explicit: int | None) -> int:
    """``explicit``, else the number in the workflow's event (``GITHUB_EVENT_PATH``)."""
    if explicit:
        return explicit
    event_path = os.environ.get("GITHUB_EVENT_PATH")
    if event_path and Path(event_path).is_file():
        event = json.loads(Path(event_path).read_text())
        number = (event.get("pull_request") or {}).get("number") or event.get("number")
        if number:
            return int(number)
    raise SystemExit("pr_comment: no pull request number (give --pr, or run on a pull_request event)")


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.review.pr_comment``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.review.pr_comment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--base", metavar="REV", help="write the report against this git revision")
    source.add_argument("--body", type=Path, metavar="FILE", help="post this Markdown file as it is")
    parser.add_argument("--head", metavar="EXP", help="an experiment or revision instead of the workspace (with --base)")
    parser.add_argument(
        "--output", type=Path, default=Path("reports/review.md"), help="where the Markdown report goes (default: %(default)s)"
    )
    parser.add_argument(
        "--rebuild-base", action="store_true", help="reproduce the base's outputs when the DVC cache lacks them (with --base)"
    )
    parser.add_argument("--html", type=Path, metavar="FILE", help="also write the HTML report (plots embedded) there")
    parser.add_argument("--dry-run", action="store_true", help="print the comment body; call no API")
    parser.add_argument("--pr", type=int, help="pull request number (default: from GITHUB_EVENT_PATH)")
    parser.add_argument("--repo", default=os.environ.get("GITHUB_REPOSITORY"), help="owner/name (default: $GITHUB_REPOSITORY)")
    parser.add_argument("--bot", default=BOT, help="login whose marked comment is updated (default: %(default)s)")
    args = parser.parse_args(argv)
    root = Path.cwd()

    try:
        if args.body:
            body = args.body.read_text()
        else:
            result = review(root, args.base, args.head, images=args.html is not None, rebuild=args.rebuild_base)
            body = render_md(result)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(body)
            if args.html:
                args.html.parent.mkdir(parents=True, exist_ok=True)
                args.html.write_text(render_html(result))
    except PipelineError as exc:
        print(f"pr_comment: {exc}", file=sys.stderr)
        return 1
    body = fit(body)

    if summary := os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(summary, "a") as fh:
            fh.write(body + "\n")
    if args.dry_run:
        sys.stdout.write(body)
        return 0
    token = os.environ.get("GITHUB_TOKEN") or os.environ.get("GH_TOKEN")
    if not (token and args.repo):
        print("pr_comment: needs GITHUB_TOKEN and --repo / GITHUB_REPOSITORY (or --dry-run)", file=sys.stderr)
        return 2
    api = github_api(token, os.environ.get("GITHUB_API_URL", "https://api.github.com"))
    try:
        action, url = upsert(api, args.repo, pull_request_number(args.pr), body, args.bot)
    except urllib.error.HTTPError as exc:
        if exc.code == 403:  # a pull request from a fork gets a read-only token: the step summary has the report
            print(f"::warning::could not post the review comment ({exc.code} {exc.reason}); it is in the job summary")
            return 0
        raise
    print(f"review comment {action}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
