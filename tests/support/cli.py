"""Running ``gpunn`` commands in-process for the CLI tests: exit status, stdout and stderr."""

from gpunn import cli


def run(capsys, *argv):
    code = cli.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ok(capsys, *argv):
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    return out, err


def user_error(capsys, *argv) -> str:
    """A user error: one line on stderr, exit status 2."""
    code, out, err = run(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, (code, out, err)
    return err
