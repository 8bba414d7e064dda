"""Ray job entrypoint: the whole pipeline on the cluster this job was submitted to.

    ray job submit --working-dir . -- python jobs/run.py --config jobs/configs/paper.yaml \
        --out /mnt/detector/runs/paper

Under ``ray job submit`` RAY_ADDRESS is set, so the job joins that cluster; ``--address`` overrides it.
Same flags as ``detector run``.
"""

import sys

from detector.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
