"""Quantitative disentanglement metrics (DCI-Lasso, MIG-kNN, grouped D); see metrics/disentangle.py."""
from .disentangle import (active_dims, bin_factor, binned_entropy, bootstrap_episodes, completeness,
                          disentanglement, fit_probes, group_labels, grouped_disentanglement, knn_mi_terms,
                          mi_matrix, mig_from_mi, oracle_code, plot_importance, r2_scores, rescale_importance,
                          score_all, shuffled_code, split_episodes, standardise)

__all__ = ["active_dims", "bin_factor", "binned_entropy", "bootstrap_episodes", "completeness", "disentanglement",
           "fit_probes", "group_labels", "grouped_disentanglement", "knn_mi_terms", "mi_matrix", "mig_from_mi",
           "oracle_code", "plot_importance", "r2_scores", "rescale_importance", "score_all", "shuffled_code",
           "split_episodes", "standardise"]
