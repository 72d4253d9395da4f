"""Valid sample specs, each in both syntaxes (the two texts must mean the same Spec)."""

MOONS_PCERT = '''\
pcert 1
model "models/moons_mlp.onnx"          # relative to this file
data halfmoons { train: 3000, test: 1000, noise: 0.1, seed: 0 }
train sgd { epochs: 5, batch: 3000, lr: 1.0, lr_decay: 0.6, loss: cross_entropy }
threat bounded {
  features { n: [0, 1, 5, 10], eps: 0.01, norm: inf }   # a list is a sweep
  labels   { m: 0, nu: 1, norm: 0 }                      # norm 0 = label flipping
}
objective targeted { on: test }
bounds crown+ibp
precision float32
device auto
gate certified_accuracy >= 0.85 at n = 10
gate nominal_accuracy >= 0.8
output "runs"
seed 0
'''

MOONS_YAML = '''\
pcert: 1
model: models/moons_mlp.onnx   # relative to this file
data: {source: halfmoons, train: 3000, test: 1000, noise: 0.1, seed: 0}
train:
  optimizer: sgd
  epochs: 5
  batch: 3000
  lr: 1.0
  lr_decay: 0.6
  loss: cross_entropy
threat:
  kind: bounded
  features: {n: [0, 1, 5, 10], eps: 0.01, norm: inf}
  labels: {m: 0, nu: 1, norm: 0}
objective: {kind: targeted, on: test}
bounds: crown+ibp
precision: float32
device: auto
gates:
  - "certified_accuracy >= 0.85 at n = 10"
  - {metric: nominal_accuracy, op: ">=", value: 0.8}
output: runs
seed: 0
'''

ENSEMBLE_PCERT = '''\
pcert 1
model "models/moons_mlp.onnx"
data csv { path: "data/train.csv", label: "y", test_path: "data/test.csv" }
train sgd { epochs: 2, batch: 64, lr: 1e-3, loss: cross_entropy }
ensemble fa { members: 50, spread: 16 }
vote roe
member agt { n: [1, 2, 4] }
certify multi_sample { batch: 400, time_limit: 10m, solver: auto }
executor ray { address: "auto" }
threat general { K: [1, 5, 10] }
gate multi_sample_certified_accuracy >= 0.5 at K = 5
'''

ENSEMBLE_YAML = '''\
pcert: 1
model: "models/moons_mlp.onnx"
data:
  source: csv
  path: data/train.csv
  label: y
  test_path: data/test.csv
train: {epochs: 2, batch: 64, lr: 1e-3, loss: cross_entropy}
ensemble: {kind: fa, members: 50, spread: 16}
vote: roe
member: {kind: agt, n: [1, 2, 4]}
certify: {kind: multi_sample, batch: 400, time_limit: 600s, solver: auto}
executor: {kind: ray, address: auto}
threat: {kind: general, K: [1, 5, 10]}
gates:
  - {metric: multi_sample_certified_accuracy, op: ">=", value: 0.5, at: {K: 5}}
'''

REGRESSION_PCERT = '''\
pcert 1
model "models/reg.onnx"
data regression { train: 200, test: 50, features: 4, noise: 0.5 }
train sgd { epochs: 3, batch: 100, lr: 0.05, loss: mse, clip: 1.0 }
threat bounded {
  features { n: 2, eps: [0.0, 0.01], norm: 2 }
  labels { m: [0, 3], nu: 0.5, norm: inf }
  paired: true
}
objective untargeted { metric: mse, on: test }
gate worst_case_mse <= 2.5 at eps = 0.01, m = 3
'''

REGRESSION_YAML = '''\
pcert: 1
model: models/reg.onnx
data: {source: regression, train: 200, test: 50, features: 4, noise: 0.5}
train: {epochs: 3, batch: 100, lr: 0.05, loss: mse, clip: 1.0}
threat:
  kind: bounded
  features: {n: 2, eps: [0.0, 0.01], norm: 2}
  labels: {m: [0, 3], nu: 0.5, norm: inf}
  paired: true
objective: {kind: untargeted, metric: mse, on: test}
gates: ["worst_case_mse <= 2.5 at eps = 0.01, m = 3"]
'''

SCORES_PCERT = '''\
# an ensemble trained elsewhere: only its votes are certified (no model, data or train)
pcert 1
ensemble scores { path: "votes.npz" }
vote plurality
threat general { K: [1, 3, 5] }
certify multi_sample { batch: 200, time_limit: 1h }
gate multi_sample_certified_accuracy >= 0.4 at K = 3
'''

SCORES_YAML = '''\
pcert: 1
ensemble: {kind: scores, path: "votes.npz"}
vote: plurality
threat: {kind: general, K: [1, 3, 5]}
certify: {kind: multi_sample, batch: 200, time_limit: 1h}
gates:
  - metric: multi_sample_certified_accuracy
    op: ">="
    value: 0.4
    at: {K: 3}
'''

PAIRS = {
    "moons": (MOONS_PCERT, MOONS_YAML),
    "ensemble": (ENSEMBLE_PCERT, ENSEMBLE_YAML),
    "regression": (REGRESSION_PCERT, REGRESSION_YAML),
    "scores": (SCORES_PCERT, SCORES_YAML),
}

FILES = ("models/moons_mlp.onnx", "models/reg.onnx", "data/train.csv", "data/test.csv",
         "votes.npz")
