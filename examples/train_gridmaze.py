"""Train an implicit VIN on 1,000 15x15 mazes for 3 epochs and print its closed-loop test success.

Measured: 18 s on a 2-core CPU while two other training jobs ran, 42.1% test success (the README's main job,
2,000 maps for 10 epochs, reaches 70%).

    python examples/train_gridmaze.py            # writes runs/example_gridmaze/best.pt
    python examples/evaluate_with_sb3.py runs/example_gridmaze/best.pt

One torch thread: with one thread per core and anything else running, torch's CPU kernels slow down several
times over. On an idle machine with more cores, raise --threads.
"""

from idp_agents import imitate

report = imitate.main(
    [
        "--env", "GridMaze-15",
        "--planner", "id-vin",
        "--train", "1000", "--val", "100", "--test", "200",
        "--epochs", "3",
        "--threads", "1",
        "--out", "runs/example_gridmaze",
    ]
)  # fmt: skip
print(f"test success {100 * report['test']['success']:.1f}% over {report['test']['starts']} start cells")
