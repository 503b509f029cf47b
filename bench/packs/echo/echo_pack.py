"""The `echo` pack of `tasuki-bench packs`: returns its arguments."""

from tasuki_pack import Pack

pack = Pack()


@pack.action("echo")
def echo(ctx, **args):
    return args


if __name__ == "__main__":
    pack.serve()
