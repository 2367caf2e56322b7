"""``python -m customer_value.campaign``: the campaign job (``jobs.campaign``); ``... report``: its lift
(``jobs.campaign_report``)."""

import sys

from customer_value.schema import register_configs

if __name__ == "__main__":
    register_configs()
    if sys.argv[1:2] == ["report"]:
        from customer_value.jobs.campaign_report import main

        del sys.argv[1]
    else:
        from customer_value.jobs.campaign import main
    main()
