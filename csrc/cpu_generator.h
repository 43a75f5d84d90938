// The Philox key of one CPU op call: one 64-bit draw from the torch CPU generator (or the default
// one), so that the same generator state gives the same output and each call advances it.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>

#include <mutex>
#include <optional>

#include "philox.h"

namespace edlm {

inline uint64_t cpu_call_key(const std::optional<at::Generator>& generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(
      generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return call_key(gen->random64(), 0);
}

}  // namespace edlm
