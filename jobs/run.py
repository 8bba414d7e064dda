"""Ray job entrypoint: the whole pipeline on the cluster this job was submitted to.

    ray job submit --runtime-env cluster/runtime_env.yaml -- \
        python jobs/run.py --config jobs/configs/paper.yaml --out /mnt/detector/runs/paper --address auto

It runs in the image's working directory (``/home/ray/detector``, see docs/cluster.md): the code and
configs are the ones baked into the image, so no ``--working-dir`` is uploaded. Under ``ray job submit``
RAY_ADDRESS is set, so the job joins that cluster; ``--address`` overrides it. Same flags as
``detector run``.
"""

import sys

from detector.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
