"""Train an implicit ConvGPPN on small mazes and print its closed-loop success (about a minute on a laptop CPU).

    python examples/train_gridmaze.py
"""

from idp_agents import imitate

report = imitate.main(
    [
        "--env", "GridMaze-v0",  # 15x15 by default
        "--planner", "id-convgppn",
        "--train", "1000", "--val", "100", "--test", "200",
        "--epochs", "2",
        "--out", "runs/example_gridmaze",
    ]
)  # fmt: skip
print(f"test success {100 * report['test']['success']:.1f}% over {report['test']['starts']} start cells")
