"""The `rendition-worker` console command: render images with the engine, or run the demo."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rendition_worker.core.encoding import AVIF_CODECS, EncoderSettings
from rendition_worker.core.errors import BadSource, InvalidSpec
from rendition_worker.core.naming import slug_stem
from rendition_worker.core.pipeline import RenderOptions, render
from rendition_worker.core.sources import Limits
from rendition_worker.core.specs import Spec, expand_set, parse_spec

DEFAULT_WIDTHS = "480,960,1440,1920,2560"
DEFAULT_FORMATS = "avif,webp,jpeg"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(parser, args)
    if args.command != "render":
        parser.print_help()
        return 2
    try:
        specs = _specs(args)
        settings = EncoderSettings(avif_codec=args.avif_codec, avif_speed=args.avif_speed)
    except (InvalidSpec, ValueError) as exc:
        parser.error(str(exc))
    options = RenderOptions(limits=Limits(max_pixels=args.max_pixels), encoder=settings)
    sources = _sources(args.sources)
    if not sources:
        parser.error("no image files found in " + ", ".join(args.sources))
    args.out.mkdir(parents=True, exist_ok=True)
    failures = sum(not _render_one(path, specs, options, args.out) for path in sources)
    return 1 if failures else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rendition-worker", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    sub = commands.add_parser("render", help="render image files or folders into a folder")
    sub.add_argument("sources", nargs="+", help="image files or folders of images")
    sub.add_argument("--out", type=Path, default=Path("renditions"), help="output folder")
    sub.add_argument("--widths", default=DEFAULT_WIDTHS, help="comma-separated widths")
    sub.add_argument("--formats", default=DEFAULT_FORMATS, help="comma-separated formats")
    sub.add_argument("--spec", action="append", default=[], help="an extra spec, repeatable")
    sub.add_argument("--avif-codec", choices=AVIF_CODECS, default="svt")
    sub.add_argument("--avif-speed", type=int, default=EncoderSettings().avif_speed)
    sub.add_argument("--max-pixels", type=int, default=Limits().max_pixels)
    _demo_parser(commands)
    return parser


def _demo_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = commands.add_parser(
        "demo",
        help="run the demo site with a real Celery worker and beat, on embedded defaults",
        description=(
            "Run the demo gallery: migrate a SQLite database, start a Celery worker (prefork) "
            "and beat on Celery's filesystem transport, and serve the site with Django's "
            "development server, each in its own process. Nothing but this package is needed: "
            "the database, broker folders, file cache, media, admin password, secret key and "
            "the processes' logs all live under --home. Environment variables that configure "
            "the demo site for production (DATABASE_URL, CELERY_BROKER_URL, REDIS_URL, ...) are "
            "ignored here. Ctrl-C (or SIGTERM) stops every process it started and exits 0; "
            "if one of them dies, the others are stopped and the exit status is 1."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub.add_argument(
        "--home",
        type=Path,
        default=Path("rendition-worker-demo"),
        help="folder of the database, media, broker, logs and admin password (created if missing)",
    )
    sub.add_argument("--host", default="127.0.0.1", help="address to serve the site on")
    sub.add_argument("--port", type=int, default=8000, help="port to serve the site on")
    sub.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="import every image file of DIR as a photo (title: the file name; files imported "
        "by an earlier run are skipped) and show progress until their renditions are done",
    )
    sub.add_argument(
        "--workers", type=int, default=2, metavar="N", help="worker processes (Celery concurrency)"
    )


def _demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.images is not None and not args.images.is_dir():
        parser.error(f"--images {args.images}: not a folder")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: not a port number")
    # Imported here: `render` needs neither Django nor Celery.
    from rendition_worker.demo.launcher import DemoOptions, run_demo  # noqa: PLC0415

    options = DemoOptions(args.home, args.host, args.port, args.images, args.workers)
    return run_demo(options)


def _specs(args: argparse.Namespace) -> tuple[Spec, ...]:
    widths = [int(width) for width in args.widths.split(",") if width.strip()]
    formats = [fmt.strip() for fmt in args.formats.split(",") if fmt.strip()]
    expanded = expand_set("command line", {"widths": widths, "formats": formats})
    return expanded + tuple(parse_spec(text) for text in args.spec)


def _sources(arguments: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            paths.extend(sorted(child for child in path.iterdir() if child.is_file()))
        elif path.is_file():
            paths.append(path)
    return paths


def _render_one(path: Path, specs: Sequence[Spec], options: RenderOptions, out: Path) -> bool:
    started = time.perf_counter()
    try:
        with path.open("rb") as fp:
            rendering = render(fp, specs, options)
            written = 0
            for rendered in rendering:
                dotted = str(rendered.spec).replace("|", ".")
                name = f"{slug_stem(path.name)}.{dotted}.{rendered.extension}"
                (out / name).write_bytes(rendered.data)
                written += len(rendered.data)
    except BadSource as exc:
        print(f"{path}: skipped, {exc.problem}: {exc}", file=sys.stderr)
        return False
    elapsed = time.perf_counter() - started
    source = rendering.source
    print(
        f"{path}: {source.format} {source.width}x{source.height} -> {len(specs)} renditions, "
        f"{written / 1024:.0f} KiB in {elapsed:.2f} s"
    )
    return True


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
