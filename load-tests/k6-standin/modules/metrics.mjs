const rt = globalThis.__k6;

class Metric {
  constructor(name, isTime = false) {
    this.name = name;
    this.isTime = isTime;
  }
  add(value) {
    rt.metric(this.name, this.type, typeof value === 'boolean' ? (value ? 1 : 0) : value, this.isTime);
  }
}
export class Counter extends Metric {
  type = 'counter';
}
export class Rate extends Metric {
  type = 'rate';
}
export class Trend extends Metric {
  type = 'trend';
}
export class Gauge extends Metric {
  type = 'gauge';
}
export default { Counter, Rate, Trend, Gauge };
