// Host-side access to the launch plans of fastdehaze/grid.h for the tests (CPU extension only):
// fastdehaze::_launch_plan, _launch_plan_visits and _launch_plan_cover (registered in
// csrc/schemas/asm.cpp; tests/test_cuda_grid.py). `kernel` names a plan function of grid.h,
// `sizes` its arguments; max_x caps grid.x (to exercise the in-kernel loop on small shapes).
#pragma once
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "fastdehaze/grid.h"

namespace fastdehaze {
namespace grid {

inline Plan plan_by_name(const std::string& k, const std::vector<int64_t>& s, int64_t max_x) {
  auto need = [&](size_t n) {
    TORCH_CHECK(s.size() == n, "fastdehaze::_launch_plan: kernel '", k, "' takes ", n, " sizes, got ", s.size());
  };
  Plan p;
  if (k == "asm_pixels") need(2), p = asm_pixels(s[0], s[1]);
  else if (k == "param_reduce") need(1), p = param_reduce(s[0]);
  else if (k == "dcp_atmo") need(1), p = dcp_atmo(s[0]);
  else if (k == "dcp_atmo_chunks") need(2), p = dcp_atmo_chunks(s[0], s[1]);
  else if (k == "flat") need(1), p = flat(s[0]);
  else if (k == "box_rows") need(2), p = box_rows(s[0], s[1]);
  else if (k == "box_cols") need(2), p = box_cols(s[0], s[1]);
  else if (k == "plane_pixels") need(2), p = plane_pixels(s[0], s[1]);
  else if (k == "patch_scores") need(3), p = patch_scores(s[0], s[1], s[2]);
  else if (k == "patch_select") need(1), p = patch_select(s[0]);
  else if (k == "patch_gather") need(1), p = patch_gather(s[0]);
  else if (k == "contrastive_blocks") need(1), p = contrastive_blocks(s[0]);
  else if (k == "contrastive_reduce") need(1), p = contrastive_reduce(s[0]);
  else if (k == "dd_chunks") need(2), p = dd_chunks(s[0], s[1]);
  else if (k == "dd_images") need(1), p = dd_images(s[0]);
  else if (k == "dd_pixels") need(2), p = dd_pixels(s[0], s[1]);
  else TORCH_CHECK(false, "fastdehaze::_launch_plan: unknown kernel '", k, "'");
  TORCH_CHECK(max_x >= 1, "fastdehaze::_launch_plan: max_x must be >= 1");
  if (p.gx > max_x) p.gx = max_x;
  return p;
}

// [gx, gy, gz, threads, units, outer, inner, n, per_thread]
inline std::vector<int64_t> launch_plan_op(const std::string& kernel, std::vector<int64_t> sizes, int64_t max_x) {
  const Plan p = plan_by_name(kernel, sizes, max_x);
  return {p.gx, p.gy, p.gz, p.threads, p.units, p.outer, p.inner, p.n, p.per_thread};
}

// Flat (blockIdx.x, o, i) triples in the order the simulated launch visits them (small plans).
inline std::vector<int64_t> launch_plan_visits_op(const std::string& kernel, std::vector<int64_t> sizes, int64_t max_x) {
  const Plan p = plan_by_name(kernel, sizes, max_x);
  TORCH_CHECK(p.units <= (int64_t(1) << 22), "fastdehaze::_launch_plan_visits: plan too large (use _launch_plan_cover)");
  std::vector<int64_t> out;
  out.reserve(3 * p.units);
  for (int64_t bx = 0; bx < p.gx; ++bx)
    for (int64_t u = bx; u < p.units; u += p.gx) {
      const Unit q = unit_of(p, u);
      out.insert(out.end(), {bx, q.o, q.i});
    }
  return out;
}

// Simulates the launch and counts: [visits, min visits of a (o, i), max visits, elements
// covered (sum over visited blocks of the block's in-range elements), out-of-range (o, i)].
inline std::vector<int64_t> launch_plan_cover_op(const std::string& kernel, std::vector<int64_t> sizes, int64_t max_x) {
  const Plan p = plan_by_name(kernel, sizes, max_x);
  TORCH_CHECK(p.units <= (int64_t(1) << 32), "fastdehaze::_launch_plan_cover: plan too large");
  std::vector<uint8_t> seen(static_cast<size_t>(p.outer * p.inner), 0);
  int64_t visits = 0, elems = 0, bad = 0;
  visit(p, [&](int64_t o, int64_t i) {
    ++visits;
    if (o < 0 || o >= p.outer || i < 0 || i >= p.inner) {
      ++bad;
      return;
    }
    uint8_t& c = seen[static_cast<size_t>(o * p.inner + i)];
    if (c < 255) ++c;
    elems += p.per_thread ? std::max<int64_t>(0, std::min(p.threads, p.n - i * p.threads)) : 1;
  });
  int64_t mn = seen.empty() ? 0 : 255, mx = 0;
  for (uint8_t c : seen) mn = std::min<int64_t>(mn, c), mx = std::max<int64_t>(mx, c);
  return {visits, mn, mx, elems, bad};
}

}  // namespace grid
}  // namespace fastdehaze
