"""``python -m customer_value.privacy forget --ids FILE [--reason erasure|objection] [key=value ...]``:
forget customers on request (``jobs.forget``); the options become Hydra overrides of ``conf/forget.yaml``."""

import sys

from customer_value.schema import register_configs

USAGE = (
    "usage: python -m customer_value.privacy forget --ids FILE [--reason erasure|objection] [key=value ...]"
)


def _overrides(args: list[str]) -> list[str]:
    """``--ids FILE`` -> ``forget.ids=FILE``, ``--reason R`` -> ``forget.reason=R``; the rest as given."""
    out, rest = [], list(args)
    while rest:
        arg = rest.pop(0)
        name, _, value = arg.partition("=")
        if name in ("--ids", "--reason"):
            if not value:
                if not rest:
                    sys.exit(f"error: {name} needs a value\n{USAGE}")
                value = rest.pop(0)
            out.append(f"forget.{name[2:]}={value}")
        else:
            out.append(arg)
    return out


if __name__ == "__main__":
    if sys.argv[1:2] != ["forget"]:
        sys.exit(USAGE)
    register_configs()
    from customer_value.jobs.forget import main

    sys.argv = [sys.argv[0], *_overrides(sys.argv[2:])]
    main()
