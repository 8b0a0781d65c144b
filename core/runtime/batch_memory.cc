#include "core/runtime/batch_memory.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>

namespace atman::runtime {
namespace {

constexpr int kTerms = 4;
using Terms = std::array<double, kTerms>;

// The features of a sample, in the order of MemoryCoefficients.
Terms Features(const MemorySample& s) {
  const auto rows = static_cast<double>(s.rows);
  return {rows * static_cast<double>(s.positions), rows * static_cast<double>(s.keys),
          rows * static_cast<double>(s.positions) * static_cast<double>(s.keys),
          rows * static_cast<double>(s.targets)};
}

double Dot(const Terms& a, const Terms& b) {
  return std::inner_product(a.begin(), a.end(), b.begin(), 0.0);
}

// Solves a[k x k] x = b in place (Gaussian elimination, partial pivoting); false if singular.
bool Solve(std::vector<std::vector<double>> a, std::vector<double> b, std::vector<double>* x) {
  const size_t k = b.size();
  for (size_t col = 0; col < k; ++col) {
    size_t pivot = col;
    for (size_t r = col + 1; r < k; ++r) {
      if (std::abs(a[r][col]) > std::abs(a[pivot][col])) pivot = r;
    }
    double scale = 0;
    for (size_t c = 0; c < k; ++c) scale = std::max(scale, std::abs(a[pivot][c]));
    if (scale == 0 || std::abs(a[pivot][col]) < 1e-12 * scale) return false;
    std::swap(a[col], a[pivot]);
    std::swap(b[col], b[pivot]);
    for (size_t r = col + 1; r < k; ++r) {
      const double f = a[r][col] / a[col][col];
      for (size_t c = col; c < k; ++c) a[r][c] -= f * a[col][c];
      b[r] -= f * b[col];
    }
  }
  x->assign(k, 0);
  for (size_t r = k; r-- > 0;) {
    double v = b[r];
    for (size_t c = r + 1; c < k; ++c) v -= a[r][c] * (*x)[c];
    (*x)[r] = v / a[r][r];
  }
  return true;
}

// Calls f(subset) for every subset of {0..n-1} of size k, in lexicographic order.
template <typename F>
void ForEachSubset(size_t n, size_t k, F&& f) {
  if (k > n) return;
  std::vector<size_t> idx(k);
  std::iota(idx.begin(), idx.end(), 0);
  while (true) {
    f(idx);
    size_t i = k;
    while (i > 0 && idx[i - 1] == n - k + i - 1) --i;
    if (i == 0) return;
    ++idx[i - 1];
    for (size_t j = i; j < k; ++j) idx[j] = idx[j - 1] + 1;
  }
}

}  // namespace

BatchMemoryModel BatchMemoryModel::PerRowPosition(double bytes) {
  BatchMemoryModel model;
  model.log_additive.per_position = model.multiplicative.per_position = bytes;
  return model;
}

bool BatchMemoryModel::known() const {
  for (const MemoryCoefficients* c : {&log_additive, &multiplicative}) {
    if (c->per_position > 0 || c->per_key > 0 || c->per_score > 0 || c->per_target > 0) {
      return true;
    }
  }
  return false;
}

const MemoryCoefficients& BatchMemoryModel::For(model::ControlMode mode) const {
  return mode == model::ControlMode::kMultiplicative ? multiplicative : log_additive;
}

int64_t BatchMemoryModel::Estimate(model::ControlMode mode, int64_t rows, int64_t positions,
                                   int64_t keys, int64_t targets) const {
  const MemoryCoefficients& c = For(mode);
  const double bytes =
      Dot({c.per_position, c.per_key, c.per_score, c.per_target},
          Features({rows, positions, keys, targets, 0}));
  return static_cast<int64_t>(std::ceil(bytes));
}

MemoryCoefficients FitMemoryCoefficients(const std::vector<MemorySample>& samples) {
  std::vector<Terms> x;
  std::vector<double> y;
  for (const MemorySample& s : samples) {
    if (s.bytes <= 0) continue;
    x.push_back(Features(s));
    y.push_back(static_cast<double>(s.bytes));
  }
  // Minimise sum_i (x_i . c) / y_i subject to x_i . c >= y_i and c >= 0. The feasible set is
  // pointed (c >= 0) and the objective bounded below, so an optimum lies at a vertex: a point
  // where kTerms independent constraints are tight, some coefficients 0 (`zero`) and the rest
  // fixed by as many samples met exactly (`tight`). There are few (at most 2^4 x C(n, 4) for n
  // samples); each is solved and checked.
  Terms weight{};  // d objective / d c_j
  for (size_t i = 0; i < x.size(); ++i) {
    for (int j = 0; j < kTerms; ++j) weight[j] += x[i][j] / y[i];
  }
  Terms best{};
  double best_objective = std::numeric_limits<double>::infinity();
  for (unsigned zero = 0; zero < (1u << kTerms); ++zero) {
    std::vector<size_t> free;
    for (size_t j = 0; j < kTerms; ++j) {
      if (!(zero & (1u << j))) free.push_back(j);
    }
    if (free.empty()) continue;
    ForEachSubset(x.size(), free.size(), [&](const std::vector<size_t>& tight) {
      std::vector<std::vector<double>> a(free.size(), std::vector<double>(free.size()));
      std::vector<double> b(free.size()), solution;
      for (size_t r = 0; r < tight.size(); ++r) {
        for (size_t c = 0; c < free.size(); ++c) a[r][c] = x[tight[r]][free[c]];
        b[r] = y[tight[r]];
      }
      if (!Solve(a, b, &solution)) return;
      double largest = 0;
      for (double v : solution) largest = std::max(largest, std::abs(v));
      Terms c{};
      for (size_t k = 0; k < free.size(); ++k) {
        if (solution[k] < -1e-9 * largest) return;  // rounding aside, infeasible
        c[free[k]] = std::max(0.0, solution[k]);
      }
      for (size_t i = 0; i < x.size(); ++i) {
        if (Dot(x[i], c) < y[i] * (1 - 1e-9)) return;
      }
      const double objective = Dot(weight, c);
      if (objective < best_objective) {
        best_objective = objective;
        best = c;
      }
    });
  }
  return {best[0], best[1], best[2], best[3]};
}

}  // namespace atman::runtime
