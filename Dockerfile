# The one image of the detector on a cluster: Ray head, GPU workers, the RayJob submitter, TensorBoard.
# Ray's official CUDA image at the pinned Ray (tests/test_k8s.py checks this tag's version against
# pyproject.toml and the RayCluster's rayVersion), Python 3.11, plus this package.
#   docker build -t registry.example.com/ml/detector:0.1.0 . && docker push registry.example.com/ml/detector:0.1.0
# `-gpu` is Ray's alias for its current CUDA build of that release; torch brings its own CUDA libraries
# from PyPI, so the node's driver must support torch's CUDA (docs/cluster.md, "Knobs").
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}

# Ray's images run as the unprivileged user `ray` (uid 1000, gid 100); the pods' securityContext says the
# same, and the numeric USER lets Kubernetes verify runAsNonRoot.
USER 1000:100
# Ray jobs run in the head's working directory: the entrypoint's relative paths (jobs/run.py,
# jobs/configs/paper.yaml) resolve here.
WORKDIR /home/ray/detector

COPY --chown=1000:100 pyproject.toml README.md constraints.txt ./
COPY --chown=1000:100 detector/ detector/
# Every dependency at the version of constraints.txt (cluster/lock_constraints.py writes it): an image
# rebuilt later installs the same packages, so a worker pulled from it runs the head's code. Ray is in
# the base image at the pinned version already; torch with its CUDA libraries is most of the size.
RUN pip install --no-cache-dir -c constraints.txt .
COPY --chown=1000:100 jobs/ jobs/
COPY --chown=1000:100 cluster/runtime_env.yaml cluster/runtime_env.yaml
