"""losscli from Python: compare three losses on the reg job (20 % gross outliers in the
training targets, clean test targets), then read the run directory back."""
import losscli

summary = losscli.compare("reg", ["mse", "l1", "huber"], seeds=2, steps=300,
                          options={"outliers": 0.2}, out="runs/reg-api")
print(summary[["rank", "loss", "final_mean", "final_std", "mae_mean", "r2_mean"]]
      .round(3).to_string(index=False))

runs, history = losscli.load_runs("runs/reg-api")  # a row per run; a row per logged value
print(runs.pivot_table("test_final", "loss", "seed").round(3).to_string())  # test RMSE
print(history.groupby(["split", "metric"]).size().to_string())  # values logged, all runs
