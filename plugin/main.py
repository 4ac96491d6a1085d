"""Entry point of the `isolation` binary: a CNI plugin when CNI_COMMAND is set, else a CLI."""

import os
import sys

from plugin import MAX_STDIN, SUPPORTED_VERSIONS, __version__, version_json


def about() -> str:
    return f"CNI isolation plugin v{__version__}\nCNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n"


def _exit(code: int) -> None:
    """Flush and leave without the interpreter's slow teardown of a large import graph."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        if "plugin.trace" in sys.modules:  # imported by the verbs that stamp; VERSION imports nothing
            sys.modules["plugin.trace"].flush()
    finally:
        os._exit(code)


def main() -> None:
    code = 0
    try:
        if os.environ.get("CNI_COMMAND"):
            code = _run_cni()
        elif len(sys.argv) > 1 and sys.argv[1] in ("-v", "--version", "version"):
            sys.stdout.write(about())
        elif len(sys.argv) > 1:
            from plugin import cli

            code = cli.main(sys.argv[1:])
        else:
            sys.stdout.write(about())
    except SystemExit as exc:  # argparse: --help, or a usage error it already explained
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException as exc:  # never a traceback on a runtime's stdout
        code = 1
        from plugin.jsonio import dumps

        sys.stdout.write(dumps(_internal_error(exc)) + "\n")
    _exit(code)


def _run_cni() -> int:
    """The CNI verb: by the resident agent when one answers here, else in this process."""
    command = os.environ.get("CNI_COMMAND")
    if command == "VERSION":  # runtimes call it for every plugin of every conflist: nothing to import
        if not sys.stdin.isatty():
            while len(sys.stdin.buffer.read(65536)) == 65536:  # drained, never held whole
                pass
        sys.stdout.write(version_json() + "\n")
        return 0
    from plugin import trace

    trace.stamp("main")
    stdin = sys.stdin.buffer.read(MAX_STDIN + 1)  # more than MAX_STDIN is error 6 (cni.Invocation.decode)
    env = dict(os.environ)
    from plugin.agent import forward

    answered = forward(env, stdin)
    trace.stamp("forwarded" if answered is not None else "no-agent")
    if answered is not None:
        sys.stdout.write(answered[0])
        return answered[1]
    import gc

    from plugin.jsonio import dumps

    # One short run that exits without teardown: the cyclic collector would only walk the
    # import graph and the objects of the run again and again (~0.8 ms of an ADD once
    # the whole registry of 1000 attachments was decoded; it no longer is on ADD).
    gc.disable()
    from plugin import cni

    out, code = cni.run(env, stdin)
    if out is not None:
        sys.stdout.write(dumps(out) + "\n")
    trace.stamp("result")
    return code


def _internal_error(exc: BaseException) -> dict:
    from plugin.errors import INTERNAL_ERROR

    return {
        "cniVersion": SUPPORTED_VERSIONS[-1],
        "code": INTERNAL_ERROR,
        "msg": "internal error in the isolation plugin",
        "details": f"{type(exc).__name__}: {exc}",
    }
